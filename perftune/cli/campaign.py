"""`perftune campaign run|status|resume`: collection campaigns on a Dask cluster."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from perftune.cli._common import db_option, make_console, positive_float, positive_int
from perftune.errors import PerftuneInputError

DESCRIPTION = """\
Run a collection campaign from a TOML spec on a Dask cluster: one worker per GPU, each
measuring exactly as `perftune collect` does (reference check, isolated launches, timing
rounds, NVML energy), this process alone writing the store. A worker killed mid-chunk has its
chunk measured again elsewhere; a GPU that keeps failing is quarantined; a stopped or killed
run is finished by `perftune campaign resume RUN`. Every measurement is stored once.

  --cluster local             one worker per visible GPU (CUDA_VISIBLE_DEVICES pinned), or,
                              without a GPU, CPU workers under the Triton interpreter
  --cluster tcp://host:8786   an existing Dask scheduler (start its workers with
                              DASK_DISTRIBUTED__WORKER__DAEMON=False)
  --cluster slurm             jobs through dask-jobqueue, per the spec's [slurm] table

See campaigns/ for specs and docs/campaigns.md for the format."""


def register(sub: Any) -> None:
    campaign = sub.add_parser("campaign", help="collection campaigns on a Dask cluster",
                              description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = campaign.add_subparsers(dest="campaign_command", metavar="COMMAND",
                                       required=True)
    run = commands.add_parser("run", help="run a campaign spec", description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog="example:\n  perftune campaign run "
                              "campaigns/h200-gemm-breadth.toml --cluster local")
    run.add_argument("spec", type=Path, help="the campaign's TOML spec")
    _cluster_options(run)
    run.set_defaults(handler=cmd_run)

    resume = commands.add_parser("resume", help="finish a stopped campaign from the store",
                                 description="Re-plan a stopped campaign's stored spec and "
                                 "measure only what the store lacks.")
    resume.add_argument("run_id", metavar="RUN", help="the campaign's id (see `status`)")
    _cluster_options(resume)
    resume.set_defaults(handler=cmd_resume)

    status = commands.add_parser("status", help="campaigns, or one campaign's progress per "
                                 "device and family, its failures and events",
                                 description="Without RUN: every campaign. With RUN: its "
                                 "progress per device and family, the failed measurements "
                                 "by error, and what happened to its workers.")
    status.add_argument("run_id", nargs="?", metavar="RUN")
    status.add_argument("--json", action="store_true", help="print JSON")
    db_option(status)
    status.set_defaults(handler=cmd_status)


def _cluster_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cluster", default="local",
                        help="local (default), slurm, or a scheduler address tcp://host:8786")
    parser.add_argument("--workers", type=positive_int,
                        help="local: at most N workers (default: one per GPU; 2 on CPU)")
    parser.add_argument("--interpret", action="store_true", default=None,
                        help="local: CPU workers under the Triton interpreter even with GPUs")
    parser.add_argument("--device-timeout", type=positive_float, default=300.0,
                        metavar="SECONDS", help="how long to wait for workers to report "
                        "their devices (default 300)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    db_option(parser)


def cmd_run(args: argparse.Namespace) -> int:
    from perftune.collect.campaign.engine import start_run
    from perftune.collect.campaign.spec import load_spec

    campaign = load_spec(args.spec)
    return _drive(args, lambda store, connection, **kw: start_run(
        store, campaign, connection, command=" ".join(["perftune", *sys.argv[1:]]), **kw),
        slurm=campaign.spec.slurm, what=campaign.name)


def cmd_resume(args: argparse.Namespace) -> int:
    from perftune.collect.campaign.engine import resume_run, stored_campaign
    from perftune.store.db import Store

    with Store(args.db, read_only=True) as store:  # the cluster may need the spec's [slurm]
        campaign, _ = stored_campaign(store, args.run_id)
    slurm = campaign.spec.slurm
    return _drive(args, lambda store, connection, **kw: resume_run(
        store, args.run_id, connection, **kw), slurm=slurm, what=f"resume {args.run_id}")


def _drive(args: argparse.Namespace, runner: Any, *, slurm: dict[str, Any], what: str) -> int:
    from perftune.cli.collect import _Progress
    from perftune.collect.campaign.cluster import connect
    from perftune.collect.sweep import Interrupted
    from perftune.store.db import Store, default_db_path

    console = make_console(stderr=True)
    console.print(f"[bold]perftune campaign[/] {what}: store {args.db or default_db_path()}")
    with args.stop.polled():
        connection = connect(args.cluster, interpret=args.interpret, workers=args.workers,
                             slurm=slurm)
        try:
            console.print(f"cluster {connection.description}"
                          + (f"; dashboard {connection.dashboard}" if connection.dashboard
                             else ""))
            with Store(args.db) as store, _Progress(console,
                                                    enabled=not args.no_progress) as bar:
                def progress(summary: Any) -> None:
                    done = summary.already_stored + sum(summary.statuses.values())
                    bar.update(done, summary.planned, summary.statuses)

                summary = runner(store, connection, stop=args.stop, progress=progress,
                                 notice=lambda text: console.print(f"[yellow]{text}[/]"),
                                 device_timeout_s=args.device_timeout)
                _print_summary(console, store, summary)
        finally:
            connection.close()
    if summary.interrupted:
        if args.stop.is_set():
            raise Interrupted(f"campaign {summary.run_id} stopped with {summary.written} "
                              f"measurements stored; `perftune campaign resume "
                              f"{summary.run_id}` finishes it")
        console.print(f"[yellow]campaign {summary.run_id} ended with work left (see `perftune "
                      f"campaign status {summary.run_id}`); `perftune campaign resume "
                      f"{summary.run_id}` tries it again[/]")
        return 1
    return 0


def _print_summary(console: Any, store: Any, summary: Any) -> None:
    from perftune.collect.campaign.engine import progress_of

    console.print(
        f"campaign [bold]{summary.run_id}[/] ({summary.name}): {summary.planned} planned, "
        f"{summary.already_stored} already stored, {summary.written} written in "
        f"{summary.elapsed_s:.1f} s ({summary.per_minute:.0f}/min) on "
        + ", ".join(f"{n} x {d}" for d, n in summary.devices.items())
        + f"; workers lost {summary.workers_lost}"
        + (f", quarantined {', '.join(summary.quarantined)}" if summary.quarantined else ""))
    _table(console, progress_of(store, summary.run_id), "per device and family")


def _table(console: Any, frame: Any, title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for column in frame.columns:
        table.add_column(str(column))
    for row in frame.itertuples(index=False):
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(table)


def cmd_status(args: argparse.Namespace) -> int:
    from perftune.collect.campaign.engine import events_of, failures_of, progress_of, runs
    from perftune.store.db import Store

    with Store(args.db, read_only=True) as store:
        if args.run_id is None:
            frames = {"campaigns": runs(store)}
        else:
            if store.query("SELECT 1 FROM campaign_runs WHERE run_id = ?",
                           [args.run_id]).empty:
                raise PerftuneInputError(f"no campaign {args.run_id!r} in the store; "
                                         f"`perftune campaign status` lists them")
            events = events_of(store, args.run_id)
            frames = {"progress": progress_of(store, args.run_id),
                      "failures": failures_of(store, args.run_id),
                      "quarantined": events[events["event"] == "quarantined"][
                          ["worker", "happened_at", "detail"]],
                      "events": events}
    if args.json:
        print(json.dumps({name: json.loads(frame.to_json(orient="records", date_format="iso"))
                          for name, frame in frames.items()}, indent=2))
        return 0
    console = make_console()
    for name, frame in frames.items():
        if frame.empty and name != "campaigns":
            continue
        _table(console, frame, name)
    return 0
