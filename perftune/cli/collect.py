"""`perftune collect`: sweep a kernel family's configs over problems into the store."""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

from perftune.cli._common import (
    db_option,
    make_console,
    non_negative_int,
    positive_float,
    positive_int,
)
from perftune.errors import PerftuneInputError

PLAIN_PROGRESS_EVERY_S = 10.0


def register(sub: Any) -> None:
    collect = sub.add_parser(
        "collect", help="sweep a kernel family's configs over problems into the store",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Sweep a kernel family over problems x configs. Every config is checked "
        "against a reference\n(wrong ones are stored as wrong_result, untimed), then timed in "
        "two or more rounds\n(CUDA events, L2 flushed, the stream held ahead of the host). "
        "Launches run in a worker\nprocess that is restarted after a crash or a timeout. "
        "Re-running the same sweep resumes it:\nstored measurements are skipped. SIGTERM or "
        "Ctrl-C stops it at the next chunk boundary\n(exit 143 or 130), its campaign marked "
        "interrupted.",
        epilog="examples:\n"
        "  perftune collect                                   # the embedded default sweep\n"
        "  perftune collect --problem 16x4096x4096 --problem 4096x4096x4096 --sample 50\n"
        "  perftune collect --family rmsnorm --problem 4096x8192 --dtype bf16\n"
        "  perftune collect --problems-file perftune/data/problems/gemm_sampled.csv --energy\n"
        "  perftune collect --family decode_attention --problem "
        "batch=1,heads=32,kv_heads=8,context=32768,head_dim=128 --all")
    collect.add_argument("--family", default="gemm",
                         help="kernel family: gemm (default), rmsnorm, decode_attention, or "
                         "package.module:Class")
    collect.add_argument("--problem", action="append", default=[], metavar="SIZES",
                         help="a problem: the family's sizes in order (MxNxK for gemm, MxN "
                         "for rmsnorm) or by name (batch=1,heads=32,...); "
                         "repeat for more")
    collect.add_argument("--problems-file", type=Path,
                         help="CSV with a header of size names (optional dtype column) or a "
                         "JSON list of objects")
    collect.add_argument("--dtype", default="fp16", help="fp16, bf16 or fp32 (default fp16)")
    collect.add_argument("--dataflows", help="comma-separated dataflows (default: all of the "
                         "family's, e.g. cublas,triton,triton_splitk)")
    collect.add_argument("--sample", type=positive_int,
                         help="a seeded sample of N configs per dataflow (default: all)")
    collect.add_argument("--sample-per", choices=("problem", "sweep"), default="problem",
                         help="draw the sample per problem (default), or once for the whole "
                         "sweep: the same configs for every problem that allows them, each "
                         "compiled once")
    collect.add_argument("--all", action="store_true",
                         help="every config, also for the default problems")
    collect.add_argument("--seed", type=non_negative_int, default=0,
                         help="seed of inputs and sampling")
    collect.add_argument("--energy", action="store_true",
                         help="also measure power and energy per call through NVML (GPU)")
    collect.add_argument("--energy-window", type=positive_float, default=1.0, metavar="SECONDS",
                         help="energy window per config, between NVML counter updates")
    collect.add_argument("--rounds", type=positive_int, default=2,
                         help="timing rounds per config (re-measured up to 4 when they "
                         "disagree by more than 3%%)")
    collect.add_argument("--timeout", type=positive_float, default=180.0, metavar="SECONDS",
                         help="per-config limit, compilation included (default 180)")
    collect.add_argument("--compile-workers", type=positive_int,
                         help="processes compiling configs ahead of timing (default: cores-2)")
    collect.add_argument("--chunk-size", type=positive_int, default=32, metavar="N",
                         help="configs measured and stored together (default 32); a stop "
                         "waits for the chunk in flight, a kill loses it")
    mode = collect.add_mutually_exclusive_group()
    mode.add_argument("--interpret", action="store_true", default=None,
                      help="run under the Triton interpreter on CPU even with a GPU")
    mode.add_argument("--gpu", action="store_false", dest="interpret",
                      help="require a GPU (fail instead of falling back to the interpreter)")
    collect.add_argument("--energy-only", action="store_true",
                         help="measure NVML energy of the sweep's stored ok configs that lack "
                         "it (or have it from the first, idle-gap loop); timings are kept")
    collect.add_argument("--retime-below", type=positive_float, metavar="MS",
                         help="time again, with the current timer, the sweep's stored ok "
                         "configs faster than MS that an older timer measured (with --energy, "
                         "also the energy of those whose energy came from the Python loop; "
                         "with --energy-only, only that); rows are updated in place, and a "
                         "rerun resumes where it stopped")
    collect.add_argument("--no-progress", action="store_true", help="no progress bar")
    db_option(collect)

    collect.set_defaults(handler=cmd_collect)


def _problems(args: argparse.Namespace, family: Any, gpu: bool) -> tuple[list[Any], int | None]:
    from perftune.collect.defaults import default_problems
    from perftune.collect.problems import normalize_dtype, parse_problem, read_problems_file

    dtype = normalize_dtype(args.dtype)
    texts = list(args.problem)
    sample = args.sample
    problems = [parse_problem(t, family.dims, dtype) for t in texts]
    if args.problems_file:
        problems += read_problems_file(args.problems_file, family.dims, dtype, family.name)
    if not problems:
        defaults, default_sample = default_problems(family, gpu)
        problems = [parse_problem(t, family.dims, dtype) for t in defaults]
        if sample is None and not args.all:
            sample = default_sample
    return problems, sample


def cmd_collect(args: argparse.Namespace) -> int:
    from perftune.collect.device import GPU, select_mode
    from perftune.collect.families import load_family
    from perftune.collect.sweep import Collector, SweepSpec, validate
    from perftune.store.db import Store, default_db_path

    family = load_family(args.family)
    mode = select_mode(args.interpret)
    problems, sample = _problems(args, family, mode == GPU)
    dataflows = [d.strip() for d in args.dataflows.split(",")] if args.dataflows else None
    if args.energy_only and mode != GPU:
        raise PerftuneInputError("--energy-only measures NVML energy and needs a GPU")
    spec = SweepSpec(family=args.family, problems=problems, dataflows=dataflows,
                     sample=sample, sample_per=args.sample_per, seed=args.seed,
                     energy=args.energy, energy_window_s=args.energy_window, rounds=args.rounds,
                     max_rounds=max(4, args.rounds), timeout_s=args.timeout,
                     compile_workers=args.compile_workers, chunk_size=args.chunk_size,
                     interpret=mode != GPU, energy_only=args.energy_only,
                     retime_below_ms=args.retime_below)
    validate(spec)
    console = make_console()
    where = "GPU" if mode == GPU else ("Triton interpreter on CPU: timings are NOT GPU "
                                       "timings")
    console.print(f"[bold]perftune collect[/] {family.name} on {where}; "
                  f"{len(problems)} problems, store {args.db or default_db_path()}")
    # A signal from here on only asks the collector to stop at its next chunk boundary.
    with args.stop.polled():
        with Store(args.db) as store, _Progress(console, enabled=not args.no_progress) as bar:
            if store.recovered:
                console.print(f"marked {store.recovered} campaign(s) interrupted: left running "
                              f"by a process that was killed")
            summary = Collector(store, spec, on_progress=bar.update, stop=args.stop).run()
        _print_summary(console, summary)
    if summary.interrupted:
        from perftune.collect.sweep import Interrupted

        if summary.campaign_id is None:
            raise Interrupted("stopped before anything was measured")
        raise Interrupted(f"campaign {summary.campaign_id} stopped at a chunk boundary with "
                          f"{summary.written} measurements stored; run the same command again "
                          f"to resume")
    return 0


class _Progress:
    def __init__(self, console: Any, enabled: bool):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.enabled = enabled
        # Logs and batch jobs get one plain line per update (at most every few seconds).
        self.plain = enabled and not console.is_terminal
        self.started = time.monotonic()
        self.last_line = -math.inf
        self.resumed_at: int | None = None
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[statuses]}"),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 console=console, disable=not enabled or self.plain)
        self.task = self.progress.add_task("measuring", total=None, statuses="")

    def __enter__(self) -> _Progress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def update(self, done: int, total: int, statuses: Counter[str]) -> None:
        text = " ".join(f"{k}={v}" for k, v in sorted(statuses.items()))
        self.progress.update(self.task, completed=done, total=total, statuses=text)
        clock = time.monotonic()
        if self.resumed_at is None:
            self.resumed_at = done
        measured = done - self.resumed_at
        if self.plain and measured and (clock - self.last_line >= PLAIN_PROGRESS_EVERY_S
                                    or done == total):
            self.last_line = clock
            elapsed = clock - self.started
            eta = elapsed / measured * (total - done)
            print(f"progress {done}/{total} {text} elapsed {elapsed:.0f}s eta {eta:.0f}s",
                  flush=True)


def _print_summary(console: Any, summary: Any) -> None:
    from rich.table import Table

    console.print(
        f"device [bold]{summary.device_id}[/] ({summary.device_kind}, timer {summary.timer}): "
        f"{summary.planned} planned, {summary.already_stored} already stored, "
        f"{summary.written} written in {summary.elapsed_s:.1f} s "
        f"({summary.per_minute:.0f}/min), worker restarts {summary.restarts}")
    if summary.statuses:
        console.print("statuses: " + ", ".join(f"{k} {v}" for k, v in
                                                sorted(summary.statuses.items())))
    if summary.best:
        table = Table(title="fastest config measured in this run, per problem")
        for column in ("problem", "dataflow", "config", "median ms"):
            table.add_column(column)
        for label, (dataflow, config, runtime) in summary.best.items():
            table.add_row(label, dataflow, json.dumps(config), f"{runtime:.4f}")
        console.print(table)


