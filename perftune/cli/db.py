"""`perftune db`: inspect, export, import, initialise, migrate and compact the store."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from perftune.cli._common import db_option, print_frame
from perftune.errors import PerftuneInputError


def register(sub: Any) -> None:
    db = sub.add_parser("db", help="inspect, export and import the store")
    db_sub = db.add_subparsers(dest="db_command", metavar="DB_COMMAND")
    stats = db_sub.add_parser(
        "stats", help="per device and family: problems, configs, ok/failed, energy coverage",
        description="Per device and family: problems, configs, ok/failed counts and energy "
        "coverage, after reading every stored value once (a damaged file is reported, exit 2).")
    stats.add_argument("--campaigns", action="store_true",
                       help="list the campaigns instead (status, start, finish, duration, "
                       "rows written)")
    stats.add_argument("--json", action="store_true", help="print JSON")
    db_option(stats)
    export = db_sub.add_parser("export", help="write the store (or a filtered part) as Parquet")
    export.add_argument("directory", type=Path, help="output directory")
    export.add_argument("--device", help="only this device id")
    export.add_argument("--family", help="only this family")
    export.add_argument("--status", help="only this status (e.g. ok)")
    db_option(export)
    imp = db_sub.add_parser("import", help="load a Parquet export; stored rows are skipped")
    imp.add_argument("directory", type=Path, help="directory written by `perftune db export`")
    db_option(imp)
    migrate = db_sub.add_parser(
        "migrate", help="bring an older store to this perftune's schema",
        description="Open the store for writing once, which applies the schema migrations it "
        "lacks (its rows are kept). Read-only commands refuse an older store until then.")
    db_option(migrate)
    init = db_sub.add_parser(
        "init", help="load the shipped dataset (data/dataset/) into the store",
        description="Load the shipped measured dataset into the store (rows already there are "
        "kept). The default store data/perftune.duckdb is built this way by itself the first "
        "time a command opens it.")
    db_option(init)
    compact = db_sub.add_parser(
        "compact", help="rewrite the store file without the space freed rows left",
        description="Rewrite the store without the free blocks that re-measured and replaced "
        "rows leave (DuckDB does not shrink its file). The original is replaced only once the "
        "copy is complete, with as many rows per table.")
    db_option(compact)
    db.set_defaults(handler=cmd_db)


def cmd_db(args: argparse.Namespace) -> int:
    from perftune.store.db import Store

    if args.db_command is None:
        raise PerftuneInputError("give a db command: stats, export, import, init, migrate or "
                                 "compact")
    if args.db_command == "migrate":
        with Store(args.db) as store:
            print(f"{store.path}: schema v{store.schema_version()}")
        return 0
    if args.db_command == "init":
        from perftune.store.dataset import build_store

        counts = build_store(args.db)
        print("loaded the shipped dataset (new rows; refreshed: stored rows it measured "
              "later): "
              + ", ".join(f"{k} {v}" for k, v in counts.items()))
        return 0
    if args.db_command == "compact":
        from perftune.store.db import compact_store, default_db_path

        path = args.db or default_db_path()
        before, after = compact_store(path)
        print(f"compacted {path}: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB")
        return 0
    if args.db_command == "import":
        from perftune.store.db import read_export

        frames = read_export(args.directory)  # every file checked before the store is opened
        with Store(args.db) as store:
            counts = store.import_frames(frames)  # one transaction
        print("imported (new rows; refreshed: stored rows the export measured later): "
              + ", ".join(f"{k} {v}" for k, v in counts.items()))
        return 0
    with Store(args.db, read_only=True) as store:
        if args.db_command == "export":
            counts = store.export_parquet(args.directory, device=args.device,
                                          family=args.family, status=args.status)
            print(f"exported to {args.directory}: "
                  + ", ".join(f"{k} {v}" for k, v in counts.items()))
            return 0
        store.verify()
        frame = store.campaigns() if args.campaigns else store.stats()
        if args.json:
            print(frame.to_json(orient="records", indent=2, date_format="iso"))
            return 0
        title = f"perftune store {store.path} (schema v{store.schema_version()})"
        if args.campaigns:
            print_frame(frame.drop(columns=["command"]), f"campaigns of {title}")
            return 0
        print_frame(frame, title)
        print_frame(store.campaign_counts(), "campaigns (seconds: of those with finished_at)")
    return 0


