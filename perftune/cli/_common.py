"""Options, output helpers and exit codes shared by the commands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

EXIT_BAD_INPUT = 2


def db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", type=Path, default=None,
                        help="store file (default: $PERFTUNE_DB, else perftune.duckdb in "
                             "$PERFTUNE_HOME)")


def model_option(parser: argparse.ArgumentParser, when_missing: str = "") -> None:
    parser.add_argument("--model", type=Path, default=None,
                        help=f"runtime model file (default: $PERFTUNE_MODEL, else "
                             f"models/gemm_runtime.skops in $PERFTUNE_HOME"
                             f"{when_missing})")


def gemm_problem_options(parser: argparse.ArgumentParser, device_required: bool = True) -> None:
    parser.add_argument("--problem", required=True, metavar="MxNxK",
                        help="GEMM sizes, e.g. 128x4096x4096 or m=128,n=4096,k=4096")
    parser.add_argument("--dtype", default="fp16", help="fp16 (default), bf16 or fp32")
    parser.add_argument("--device", required=device_required,
                        help="device id as in `perftune db stats`")



def make_console() -> Any:
    from rich.console import Console

    # Logs and pipes get wide lines rather than rich's 80-column default.
    return Console(width=None if sys.stdout.isatty() else 160)



def print_frame(frame: Any, title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for column in frame.columns:
        table.add_column(str(column))
    for row in frame.itertuples(index=False):
        table.add_row(*(str(v) for v in row))
    if frame.empty:
        table.caption = "no measurements yet: run `perftune collect`"
    make_console().print(table)


