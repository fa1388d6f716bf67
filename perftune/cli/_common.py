"""Options, output helpers, exit codes and the stop token shared by the commands."""

from __future__ import annotations

import argparse
import contextlib
import math
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from perftune.errors import PerftuneInputError

EXIT_BAD_INPUT = 2
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error as perftune's one line (``perftune: error: ...``, exit 2)
    instead of the usage text followed by the error."""

    def error(self, message: str) -> NoReturn:
        raise PerftuneInputError(f"{message} (see `{self.prog} --help`)")


class StopToken:
    """The first SIGTERM or SIGINT sets it (a batch system's time limit, GNU timeout, Ctrl-C);
    later ones, while stopping, are ignored: GNU timeout signals the process and then its
    group, so two arrive microseconds apart.

    Inside :meth:`polled`, a signal only sets the token, and the running code (the collector,
    the live tuner) stops at its next safe point: a chunk boundary, with the campaign closed
    as interrupted. Elsewhere the first signal raises KeyboardInterrupt, as Ctrl-C does.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.polling = False

    def is_set(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "SIGINT"

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a process that a signal ended."""
        return 128 + int(self.signum or signal.SIGINT)

    @contextlib.contextmanager
    def polled(self) -> Iterator[StopToken]:
        before, self.polling = self.polling, True
        try:
            yield self
        finally:
            self.polling = before

    def handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            return  # stopping already
        self.signum = signum
        if not self.polling:
            raise KeyboardInterrupt


# -- argument types: a bad value is argparse's one-line error, naming the flag ---------------
def _number(text: str, kind: type[int] | type[float], what: str) -> Any:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, not {text!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be {what}, not {text!r}")
    return value


def positive_int(text: str) -> int:
    value: int = _number(text, int, "a whole number of at least 1")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, not {text}")
    return value


def non_negative_int(text: str) -> int:
    value: int = _number(text, int, "a whole number of at least 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 0, not {text}")
    return value


def positive_float(text: str) -> float:
    value: float = _number(text, float, "a positive number")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def fraction(text: str) -> float:
    """A share in [0, 1)."""
    value: float = _number(text, float, "a number in [0, 1)")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), not {text}")
    return value


def db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", type=Path, default=None,
                        help="store file (default: $PERFTUNE_DB, else perftune.duckdb in "
                             "$PERFTUNE_HOME)")


def model_option(parser: argparse.ArgumentParser, when_missing: str = "") -> None:
    parser.add_argument("--model", type=Path, default=None,
                        help=f"runtime model file (default: $PERFTUNE_MODEL, else "
                             f"models/gemm_runtime.skops in $PERFTUNE_HOME"
                             f"{when_missing})")


def family_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", default="gemm",
                        help="kernel family: gemm (default), rmsnorm, decode_attention, or "
                        "package.module:Class")


def problem_options(parser: argparse.ArgumentParser, device_required: bool = True) -> None:
    """--family, --problem, --dtype and --device: a problem of any family on a device."""
    family_option(parser)
    parser.add_argument("--problem", required=True, metavar="SIZES",
                        help="the family's sizes in order (gemm 128x4096x4096, rmsnorm "
                        "4096x8192) or by name (batch=1,heads=32,kv_heads=8,context=32768,"
                        "head_dim=128)")
    parser.add_argument("--dtype", default="fp16", help="fp16 (default), bf16 or fp32")
    parser.add_argument("--device", required=device_required,
                        help="device id as in `perftune db stats`")


def family_problem(args: argparse.Namespace) -> tuple[Any, Any]:
    """The family named by --family and its problem from --problem and --dtype, checked."""
    from perftune.collect.families import load_family
    from perftune.collect.problems import normalize_dtype, parse_problem

    family = load_family(args.family)
    problem = parse_problem(args.problem, family.dims, normalize_dtype(args.dtype))
    return family, family.validate(problem).on(args.device)



def make_console(*, stderr: bool = False) -> Any:
    """A rich console on stdout, or on stderr for progress and notices beside machine-readable
    output (``--json``)."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Logs and pipes get wide lines rather than rich's 80-column default.
    return Console(width=None if stream.isatty() else 160, stderr=stderr)



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


