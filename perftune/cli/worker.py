"""`perftune worker`: run a service's tune jobs of this machine's device."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from perftune.cli._common import db_option, model_option, positive_float


def register(sub: Any) -> None:
    worker = sub.add_parser(
        "worker", help="run a service's tune jobs for this machine's device",
        description="Ask a perftune service (--service) for the tune jobs of this machine's "
        "device, tune each live as `perftune tune --backend live` does (into the local "
        "store, model-guided on a GPU, at random under the Triton interpreter), heartbeat "
        "while measuring, post the measurements to the service and mark the job done. "
        "SIGINT or SIGTERM stops it at the next measurement and gives the running job "
        "back to the queue. The write token comes from --token or PERFTUNE_TOKEN (the "
        "variable keeps it out of `ps`).",
        epilog="example:\n  PERFTUNE_TOKEN=... perftune worker --service "
        "http://tuner.example:8000",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    worker.add_argument("--service", required=True, metavar="URL",
                        help="the service's base URL, e.g. http://127.0.0.1:8000")
    worker.add_argument("--token", help="the service's write token (default: "
                        "$PERFTUNE_TOKEN)")
    worker.add_argument("--once", action="store_true",
                        help="run at most one job, then exit (none queued: exit at once)")
    worker.add_argument("--poll", type=positive_float, default=10.0, metavar="S",
                        help="seconds between asks while no job is queued (default 10)")
    worker.add_argument("--method", default="model",
                        help="search method, as `perftune tune --method` (default model)")
    worker.add_argument("--timeout", type=positive_float, default=180.0, metavar="S",
                        help="longest one measurement may take (default 180)")
    worker.add_argument("--name", default="", help="the worker's name in the service "
                        "(default host:pid)")
    model_option(worker, "; trained on the local store when missing")
    db_option(worker)
    worker.set_defaults(handler=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> int:
    from perftune.errors import PerftuneInputError
    from perftune.tune.search import METHODS
    from perftune.tune.worker import ServiceClient, ServiceError, WorkerOptions, serve_jobs

    if args.method not in METHODS:
        raise PerftuneInputError(f"unknown --method {args.method!r}; choose from "
                                 f"{', '.join(METHODS)}")
    if not args.service.startswith(("http://", "https://")):
        raise PerftuneInputError(f"--service must be an http:// or https:// URL, not "
                                 f"{args.service!r}")
    token = args.token or os.environ.get("PERFTUNE_TOKEN")
    if not token:
        raise PerftuneInputError("the jobs endpoints need the service's write token: pass "
                                 "--token or set PERFTUNE_TOKEN")
    options = WorkerOptions(db=args.db, model=args.model, method=args.method,
                            once=args.once, poll_s=args.poll, timeout_s=args.timeout,
                            name=args.name)

    def say(text: str) -> None:
        print(f"perftune worker: {text}", file=sys.stderr, flush=True)

    client = ServiceClient(args.service, token)
    try:
        with args.stop.polled():
            done = serve_jobs(client, options, args.stop, say)
    except ServiceError as exc:
        raise PerftuneInputError(str(exc)) from exc
    finally:
        client.close()
    say(f"{done} job(s) done")
    if args.stop.is_set():
        print(f"perftune: interrupted by {args.stop.name}", file=sys.stderr)
        return int(args.stop.exit_code)
    return 0
