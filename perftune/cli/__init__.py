"""The ``perftune`` command line: one module per command group, each registering its parser
beside its handler."""

from __future__ import annotations

import argparse
import os
import sys

from perftune.cli import collect, db, device, model, serve, tune
from perftune.cli._common import EXIT_BAD_INPUT
from perftune.errors import PerftuneInputError

COMMANDS = (device, collect, db, model, tune, serve)
DESCRIPTION = """\
perftune measures GPU kernel configurations into a DuckDB store, models them, tunes kernels in
few measurements and serves the best config per problem and device over HTTP.

  perftune device [--calibrate]   the device a collection would run on (and its ceilings)
  perftune collect                sweep a kernel family over problems x configs
  perftune db stats|export|import|init|migrate|compact   the store
  perftune fit                    train a runtime (or power, energy) model on the store
  perftune predict                predict one config, or rank every known config
  perftune evaluate               a model's accuracy on the held-out problems (HTML report)
  perftune tune                   find the best dataflow and config in few measurements
  perftune serve                  the REST service (OpenAPI docs at /docs)

The store is perftune.duckdb in $PERFTUNE_HOME (default ~/.local/share/perftune) unless --db
or PERFTUNE_DB says otherwise; the first command that opens it builds it from the dataset
shipped in the package (real H100 and H200 sweeps). Without a GPU, kernels run under the Triton
interpreter on CPU; those rows are stored under the device 'cpu-triton-interpreter' with timer
'interpreter_wall_clock', never as GPU times. `perftune COMMAND --help` says more."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="perftune", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def _interrupt_on_sigterm() -> None:
    """SIGTERM (a batch system's time limit, `timeout`) ends a run as Ctrl-C does: the
    campaign is marked interrupted and the store closed cleanly."""
    import signal

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)




def main(argv: list[str] | None = None) -> int:
    _interrupt_on_sigterm()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        _bootstrap_default_store(args)
        return int(args.handler(args))
    except PerftuneInputError as exc:
        print(f"perftune: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("perftune: interrupted; finished chunks are stored, re-run to resume",
              file=sys.stderr)
        return 130


def _bootstrap_default_store(args: argparse.Namespace) -> None:
    """A fresh checkout's first command that opens the default store builds it from the
    shipped dataset (seconds, no GPU)."""
    if getattr(args, "db", None) is not None or os.environ.get("PERFTUNE_DB"):
        return
    if args.command == "device" and not args.calibrate:
        return
    from perftune.store.dataset import ensure_default_store

    built = ensure_default_store()
    if built:
        print(f"perftune: built {built} from the shipped dataset", file=sys.stderr)

