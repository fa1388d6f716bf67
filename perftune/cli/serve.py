"""`perftune serve`: the REST service on uvicorn."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from perftune.cli._common import db_option, model_option
from perftune.errors import PerftuneInputError


def register(sub: Any) -> None:
    serve = sub.add_parser(
        "serve", help="run the REST service (FastAPI on uvicorn): recommendations over HTTP",
        description="Serve recommendations over HTTP (OpenAPI docs at /docs). Starts from the "
        "shipped dataset and model on a fresh machine, no GPU needed: the store is built and "
        "the model trained (~20 s, once) when absent. Writes (POST /v1/measurements) need "
        "PERFTUNE_TOKEN in the environment (never a flag: flags show in `ps`); "
        "PERFTUNE_READ_TOKEN makes reads need a token too.")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    serve.add_argument("--port", type=int, default=8000, help="port (default %(default)s)")
    serve.add_argument("--workers", type=int, default=1,
                       help="processes (default 1; more than 1 serves reads only)")
    model_option(serve, "; trained when missing")
    serve.add_argument("--log-level", default="warning", choices=["debug", "info", "warning"])
    db_option(serve)
    serve.set_defaults(handler=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    if args.workers < 1 or not 0 < args.port < 65536:
        raise PerftuneInputError("--workers must be at least 1 and --port within 1..65535")
    if args.workers > 1 and os.environ.get("PERFTUNE_TOKEN"):
        raise PerftuneInputError("the store has one writer: with PERFTUNE_TOKEN set (writes on) "
                                 "use --workers 1, or unset it to serve reads from several")
    # The app factory reads its settings from the environment, in every worker process.
    if args.db is not None:
        os.environ["PERFTUNE_DB"] = str(args.db)
    if args.model is not None:
        os.environ["PERFTUNE_MODEL"] = str(args.model)
    print(f"perftune serve: http://{args.host}:{args.port} (docs at /docs), "
          f"{args.workers} worker(s)", file=sys.stderr)
    uvicorn.run("perftune.service.app:create_app", factory=True, host=args.host, port=args.port,
                workers=args.workers, log_level=args.log_level, access_log=False)
    return 0


