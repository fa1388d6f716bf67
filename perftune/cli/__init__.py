"""The ``perftune`` command line: one module per command group, each registering its parser
beside its handler."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from perftune.cli import (
    campaign,
    collect,
    db,
    device,
    kernels,
    model,
    report,
    serve,
    tune,
    worker,
)
from perftune.cli._common import EXIT_BAD_INPUT, STOP_SIGNALS, Parser, StopToken
from perftune.errors import PerftuneInputError

COMMANDS = (device, collect, campaign, db, model, tune, kernels, serve, worker, report)
DESCRIPTION = """\
perftune measures GPU kernel configurations into a DuckDB store, models them, tunes kernels in
few measurements and serves the best config per problem and device over HTTP.

  perftune device [--calibrate]   the device a collection would run on (and its ceilings)
  perftune collect                sweep a kernel family over problems x configs
  perftune campaign run|status|resume   campaigns from a TOML spec on a Dask cluster
  perftune db stats|export|import|init|migrate|compact   the store
  perftune fit                    train a runtime (or power, energy) model on the store
  perftune predict                predict one config, or rank every known config
  perftune evaluate               a model's accuracy on the held-out problems (HTML report)
  perftune tune                   find the best dataflow and config in few measurements
  perftune kernels                kernels tuned by the autotune decorator, their keys and picks
  perftune report                 the analysis plots of the store in one HTML page
  perftune serve                  the REST service (OpenAPI docs at /docs)
  perftune worker                 run a service's tune jobs for this machine's device

The store is perftune.duckdb in $PERFTUNE_HOME (default ~/.local/share/perftune) unless --db
or PERFTUNE_DB says otherwise; the first command that opens it builds it from the dataset
shipped in the package (real H100 and H200 sweeps). Without a GPU, kernels run under the Triton
interpreter on CPU; those rows are stored under the device 'cpu-triton-interpreter' with timer
'interpreter_wall_clock', never as GPU times. `perftune COMMAND --help` says more."""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="perftune", description=DESCRIPTION,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code: 0, 2 for bad input (one line on stderr), 130 or
    143 when SIGINT or SIGTERM stopped it (one line on stderr saying what was kept)."""
    stop = StopToken()
    installed = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, stop.handle) for sig in STOP_SIGNALS} if installed \
        else {}
    try:
        return _run(argv, stop)
    finally:
        for sig, handler in previous.items():
            # Once stopping, a late signal must not kill the process in its last steps.
            signal.signal(sig, signal.SIG_IGN if stop.is_set() else
                          handler if handler is not None else signal.SIG_DFL)


def _run(argv: list[str] | None, stop: StopToken) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return EXIT_BAD_INPUT
        args.stop = stop
        _bootstrap_default_store(args)
        return int(args.handler(args))
    except KeyboardInterrupt as exc:
        return _interrupted(stop, str(exc))
    except PerftuneInputError as exc:
        print(f"perftune: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception:
        if stop.is_set():  # what the signal broke off (DuckDB: "Query interrupted")
            return _interrupted(stop, "")
        raise


def _interrupted(stop: StopToken, what: str) -> int:
    print(f"perftune: interrupted by {stop.name}" + (f": {what}" if what else ""),
          file=sys.stderr)
    return stop.exit_code


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

