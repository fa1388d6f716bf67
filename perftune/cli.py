"""The ``perftune`` command line."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from store.errors import PerftuneInputError

EXIT_BAD_INPUT = 2
PLAIN_PROGRESS_EVERY_S = 10.0
DESCRIPTION = """\
perftune measures GPU kernel configurations into a DuckDB store (and, in later releases,
models, tunes and serves them).

  perftune device                 what this machine would measure on
  perftune collect                sweep a kernel family over problems x configs
  perftune db stats               what the store holds
  perftune db export DIR / import DIR   move a store (or part) as Parquet
  perftune db init                load the shipped dataset (data/dataset/) into the store

The store is data/perftune.duckdb unless --db or PERFTUNE_DB says otherwise; the first command
that opens it builds it from the shipped dataset (data/dataset/: real H100 and H200 sweeps).
Without a GPU, kernels run under the Triton interpreter on CPU; those rows are stored under
the device 'cpu-triton-interpreter' with timer 'interpreter_wall_clock', never as GPU times."""


def _db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", type=Path, default=None,
                        help="store file (default: $PERFTUNE_DB or data/perftune.duckdb)")


def _model_option(parser: argparse.ArgumentParser, when_missing: str = "") -> None:
    parser.add_argument("--model", type=Path, default=None,
                        help=f"runtime model file (default data/models/gemm_runtime.skops"
                             f"{when_missing})")


def _gemm_problem_options(parser: argparse.ArgumentParser, device_required: bool = True) -> None:
    parser.add_argument("--problem", required=True, metavar="MxNxK",
                        help="GEMM sizes, e.g. 128x4096x4096 or m=128,n=4096,k=4096")
    parser.add_argument("--dtype", default="fp16", help="fp16 (default), bf16 or fp32")
    parser.add_argument("--device", required=device_required,
                        help="device id as in `perftune db stats`")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="perftune", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    device = sub.add_parser("device", help="show the device a collection would run on",
                            description="Print the identity of the device a collection "
                            "would run on: GPU 0 with CUDA, else the Triton interpreter.")
    device.add_argument("--json", action="store_true", help="print JSON")
    device.add_argument("--interpret", action="store_true",
                        help="describe the Triton-interpreter (CPU) device even with a GPU")
    device.add_argument("--calibrate", action="store_true",
                        help="measure the GPU's ceilings (fp16/bf16 matmul TFLOP/s, copy "
                        "GB/s) and store them with the device (takes ~10 s)")
    _db_option(device)

    collect = sub.add_parser(
        "collect", help="sweep a kernel family's configs over problems into the store",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Sweep a kernel family over problems x configs. Every config is checked "
        "against a reference\n(wrong ones are stored as wrong_result, untimed), then timed in "
        "two or more rounds\n(CUDA events, L2 flushed, the stream held ahead of the host). "
        "Launches run in a worker\nprocess that is restarted after a crash or a timeout. "
        "Re-running the same sweep resumes it:\nstored measurements are skipped.",
        epilog="examples:\n"
        "  perftune collect                                   # the embedded default sweep\n"
        "  perftune collect --problem 16x4096x4096 --problem 4096x4096x4096 --sample 50\n"
        "  perftune collect --family rmsnorm --problem 4096x8192 --dtype bf16\n"
        "  perftune collect --problems-file data/problems/llm.csv --energy")
    collect.add_argument("--family", default="gemm",
                         help="kernel family: gemm, rmsnorm, or package.module:Class "
                         "(default gemm)")
    collect.add_argument("--problem", action="append", default=[], metavar="SIZES",
                         help="a problem as MxNxK (gemm), MxN (rmsnorm) or m=..,n=..,k=..; "
                         "repeat for more")
    collect.add_argument("--problems-file", type=Path,
                         help="CSV with a header of size names (optional dtype column) or a "
                         "JSON list of objects")
    collect.add_argument("--dtype", default="fp16", help="fp16, bf16 or fp32 (default fp16)")
    collect.add_argument("--dataflows", help="comma-separated dataflows (default: all of the "
                         "family's, e.g. cublas,triton,triton_splitk)")
    collect.add_argument("--sample", type=int,
                         help="a seeded sample of N configs per dataflow (default: all)")
    collect.add_argument("--all", action="store_true",
                         help="every config, also for the default problems")
    collect.add_argument("--seed", type=int, default=0, help="seed of inputs and sampling")
    collect.add_argument("--energy", action="store_true",
                         help="also measure power and energy per call through NVML (GPU)")
    collect.add_argument("--energy-window", type=float, default=1.0, metavar="SECONDS",
                         help="energy window per config, between NVML counter updates")
    collect.add_argument("--rounds", type=int, default=2,
                         help="timing rounds per config (re-measured up to 4 when they "
                         "disagree by more than 3%%)")
    collect.add_argument("--timeout", type=float, default=180.0, metavar="SECONDS",
                         help="per-config limit, compilation included (default 180)")
    collect.add_argument("--compile-workers", type=int,
                         help="processes compiling configs ahead of timing (default: cores-2)")
    mode = collect.add_mutually_exclusive_group()
    mode.add_argument("--interpret", action="store_true", default=None,
                      help="run under the Triton interpreter on CPU even with a GPU")
    mode.add_argument("--gpu", action="store_false", dest="interpret",
                      help="require a GPU (fail instead of falling back to the interpreter)")
    collect.add_argument("--energy-only", action="store_true",
                         help="measure NVML energy of the sweep's stored ok configs that lack "
                         "it (or have it from the first, idle-gap loop); timings are kept")
    collect.add_argument("--retime-below", type=float, metavar="MS",
                         help="time again, with the current timer, the sweep's stored ok "
                         "configs faster than MS that an older timer measured (with --energy, "
                         "also the energy of those whose energy came from the Python loop; "
                         "with --energy-only, only that); rows are updated in place, and a "
                         "rerun resumes where it stopped")
    collect.add_argument("--no-progress", action="store_true", help="no progress bar")
    _db_option(collect)

    db = sub.add_parser("db", help="inspect, export and import the store")
    db_sub = db.add_subparsers(dest="db_command", metavar="DB_COMMAND")
    stats = db_sub.add_parser("stats", help="per device and family: problems, configs, "
                              "ok/failed, energy coverage")
    stats.add_argument("--json", action="store_true", help="print JSON")
    _db_option(stats)
    export = db_sub.add_parser("export", help="write the store (or a filtered part) as Parquet")
    export.add_argument("directory", type=Path, help="output directory")
    export.add_argument("--device", help="only this device id")
    export.add_argument("--family", help="only this family")
    export.add_argument("--status", help="only this status (e.g. ok)")
    _db_option(export)
    imp = db_sub.add_parser("import", help="load a Parquet export; stored rows are skipped")
    imp.add_argument("directory", type=Path, help="directory written by `perftune db export`")
    _db_option(imp)
    fit = sub.add_parser(
        "fit", help="train a runtime model on the store (held-out problems excluded)",
        description="Train a GEMM runtime model on the store's ok GPU measurements, leaving "
        "out the held-out problems (data/problems/heldout.csv). 'forest' is a random forest on "
        "log runtime with calibrated intervals; 'roofline' the analytical model with one fitted "
        "scale per dataflow. Saved as a skops file (no pickle) with its features, devices "
        "and data snapshot.")
    fit.add_argument("--model", choices=["forest", "roofline"], default="forest")
    fit.add_argument("--target", choices=["runtime", "power", "energy"], default="runtime",
                     help="what the model predicts: runtime (default), or the average power / "
                     "energy per call (forests on the busy-GPU energy rows; saved beside the "
                     "runtime model as gemm_power.skops / gemm_energy.skops)")
    fit.add_argument("--device", action="append", help="train on this device only "
                     "(repeatable; default: every GPU in the store)")
    fit.add_argument("--trees", type=int, help="forest size (default: 60 for runtime, 100 for "
                     "power and energy)")
    fit.add_argument("--out", type=Path, default=None,
                     help="model file (default data/models/gemm_runtime.skops)")
    _db_option(fit)
    predict = sub.add_parser(
        "predict", help="predict one config's runtime, or rank every known config",
        description="Predict the runtime of one GEMM config on a device (--dataflow and "
        "--config), or rank every config the store knows for the problem (default), with the "
        "model's interval and the roofline's bound.")
    _gemm_problem_options(predict)
    predict.add_argument("--dataflow", help="one dataflow (cublas, triton, triton_splitk)")
    predict.add_argument("--config", help="one config as JSON, e.g. "
                         "'{\"BLOCK_M\":128,\"BLOCK_N\":128,\"BLOCK_K\":64,\"GROUP_M\":8,"
                         "\"num_warps\":8,\"num_stages\":3}'")
    predict.add_argument("--top", type=int, default=10, help="how many ranked configs to show")
    predict.add_argument("--objective", choices=["time", "energy"], default="time",
                         help="rank by predicted runtime (default) or energy per call")
    _model_option(predict)
    predict.add_argument("--json", action="store_true", help="print JSON")
    _db_option(predict)
    evaluate = sub.add_parser(
        "evaluate", help="report a model's accuracy on the held-out problems",
        description="Evaluate a model on the held-out problems (data/problems/heldout.csv): "
        "writes metrics.json, predicted_vs_measured.png, residuals_by_size.png, roofline.png "
        "and index.html into --out.")
    _model_option(evaluate)
    evaluate.add_argument("--device", help="only this device (default: every GPU)")
    evaluate.add_argument("--out", type=Path, default=Path("report"),
                          help="report directory (default ./report)")
    _db_option(evaluate)
    tune = sub.add_parser(
        "tune", help="find the best dataflow and config of a GEMM problem in few measurements",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Search a GEMM problem's dataflows and configs with at most --budget "
        "measurements.\nMethods: model (perftune: cuBLAS first, then the model's best "
        "candidates, corrected as\nmeasurements arrive, stopping early when nothing can win), "
        "tpe / gp / random (Optuna samplers\nover the conditional space), tutorial (the Triton "
        "tutorial's 8 configs), nvmmh (NVIDIA's\nnvMatmulHeuristics, mapped to our space), "
        "cublas.\nBackends: replay answers from the store's recorded "
        "measurements (CPU; only recorded configs\ncan be proposed); live measures on this "
        "machine's GPU through the collector (checked,\nisolated, stored; stored ones are "
        "reused), or under the Triton interpreter without one.\nWith --objectives time,energy "
        "it also measures NVML energy per call (live: a GPU; replay:\nrecorded energy) and "
        "prints the time-energy Pareto front and the energy that --max-time-loss saves.",
        epilog="examples:\n  perftune tune --problem 64x11008x4096 --device "
        "nvidia-h100-80gb-hbm3 --budget 8\n  perftune tune --problem 64x11008x4096 --backend "
        "live --objectives time,energy --budget 16")
    _gemm_problem_options(tune, device_required=False)
    tune.add_argument("--budget", type=int, default=8, help="most measurements (default 8)")
    tune.add_argument("--method", default="model",
                      help="model, tpe, gp, random, tutorial or cublas (default model)")
    tune.add_argument("--dataflows", help="comma-separated subset, e.g. triton")
    tune.add_argument("--backend", choices=["replay", "live"], default="replay",
                      help="replay recorded measurements (default) or measure live")
    tune.add_argument("--seed", type=int, default=0)
    tune.add_argument("--objectives", default="time",
                      help="time (default), or time,energy for the time-energy front")
    tune.add_argument("--max-time-loss", type=float, default=0.05,
                      help="with energy: the slowdown accepted to save energy (default 0.05)")
    tune.add_argument("--energy-window", type=float, default=1.0,
                      help="live energy: NVML window per config in seconds (default 1; "
                      "shorter windows are noisier, and under 0.9 s not trusted for models)")
    tune.add_argument("--storage", help="Optuna storage URL to keep the study in, e.g. "
                      "sqlite:///tune.db (view with optuna-dashboard)")
    _model_option(tune, "; trained on the fly when missing")
    tune.add_argument("--json", action="store_true", help="print JSON")
    _db_option(tune)
    migrate = db_sub.add_parser(
        "migrate", help="bring an older store to this perftune's schema",
        description="Open the store for writing once, which applies the schema migrations it "
        "lacks (its rows are kept). Read-only commands refuse an older store until then.")
    _db_option(migrate)
    init = db_sub.add_parser(
        "init", help="load the shipped dataset (data/dataset/) into the store",
        description="Load the shipped measured dataset into the store (rows already there are "
        "kept). The default store data/perftune.duckdb is built this way by itself the first "
        "time a command opens it.")
    _db_option(init)
    compact = db_sub.add_parser(
        "compact", help="rewrite the store file without the space freed rows left",
        description="Rewrite the store without the free blocks that re-measured and replaced "
        "rows leave (DuckDB does not shrink its file). The original is replaced only once the "
        "copy is complete, with as many rows per table.")
    _db_option(compact)
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
    _model_option(serve, "; trained when missing")
    serve.add_argument("--log-level", default="warning", choices=["debug", "info", "warning"])
    _db_option(serve)
    return parser


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
    uvicorn.run("service.app:create_app", factory=True, host=args.host, port=args.port,
                workers=args.workers, log_level=args.log_level, access_log=False)
    return 0


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
    handlers = {"device": cmd_device, "collect": cmd_collect, "db": cmd_db, "fit": cmd_fit,
                "predict": cmd_predict, "tune": cmd_tune, "evaluate": cmd_evaluate,
                "serve": cmd_serve}
    if args.command is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        _bootstrap_default_store(args)
        return handlers[args.command](args)
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
    from store.dataset import ensure_default_store

    if ensure_default_store():
        print("perftune: built data/perftune.duckdb from the shipped dataset (data/dataset/)",
              file=sys.stderr)


def _console() -> Any:
    from rich.console import Console

    # Logs and pipes get wide lines rather than rich's 80-column default.
    return Console(width=None if sys.stdout.isatty() else 160)


def cmd_device(args: argparse.Namespace) -> int:
    from collectors.device import GPU, calibrate, identify, select_mode

    mode = select_mode(True if args.interpret else None)
    identity = identify(mode)
    if args.calibrate:
        if mode != GPU:
            raise PerftuneInputError("--calibrate needs a GPU; none is visible")
        identity.update(calibrate())
        from store.db import Store, now

        record = {k: v for k, v in identity.items() if k != "software"}
        with Store(args.db) as store:
            store.upsert_device({**record, "calibrated_at": now()})
    if args.json:
        print(json.dumps(identity, indent=2, default=str))
        return 0
    from rich.table import Table

    table = Table(title="perftune device", show_header=False)
    for key, value in identity.items():
        if key == "software":
            for name, version in value.items():
                table.add_row(name, str(version))
        else:
            table.add_row(key, str(value))
    _console().print(table)
    return 0


def _problems(args: argparse.Namespace, family: Any, gpu: bool) -> tuple[list[Any], int | None]:
    from collectors.problems import normalize_dtype, parse_problem, read_problems_file
    from perftune.defaults import default_problems

    dtype = normalize_dtype(args.dtype)
    texts = list(args.problem)
    sample = args.sample
    problems = [parse_problem(t, family.dims, dtype) for t in texts]
    if args.problems_file:
        problems += read_problems_file(args.problems_file, family.dims, dtype)
    if not problems:
        defaults, default_sample = default_problems(family.name, gpu)
        problems = [parse_problem(t, family.dims, dtype) for t in defaults]
        if sample is None and not args.all:
            sample = default_sample
    return problems, sample


def cmd_collect(args: argparse.Namespace) -> int:
    from collectors.device import GPU, select_mode
    from collectors.families import load_family
    from collectors.sweep import Collector, SweepSpec, validate
    from store.db import Store, default_db_path

    family = load_family(args.family)
    mode = select_mode(args.interpret)
    problems, sample = _problems(args, family, mode == GPU)
    dataflows = [d.strip() for d in args.dataflows.split(",")] if args.dataflows else None
    if args.energy_only and mode != GPU:
        raise PerftuneInputError("--energy-only measures NVML energy and needs a GPU")
    if args.retime_below is not None and args.retime_below <= 0:
        raise PerftuneInputError("--retime-below needs a positive time in ms, e.g. 0.1")
    spec = SweepSpec(family=args.family, problems=problems, dataflows=dataflows,
                     sample=sample, seed=args.seed, energy=args.energy,
                     energy_window_s=args.energy_window, rounds=args.rounds,
                     max_rounds=max(4, args.rounds), timeout_s=args.timeout,
                     compile_workers=args.compile_workers, interpret=mode != GPU,
                     energy_only=args.energy_only, retime_below_ms=args.retime_below)
    validate(spec)
    console = _console()
    where = "GPU" if mode == GPU else ("Triton interpreter on CPU: timings are NOT GPU "
                                       "timings")
    console.print(f"[bold]perftune collect[/] {family.name} on {where}; "
                  f"{len(problems)} problems, store {args.db or default_db_path()}")
    with Store(args.db) as store, _Progress(console, enabled=not args.no_progress) as bar:
        summary = Collector(store, spec, on_progress=bar.update).run()
    _print_summary(console, summary)
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


def cmd_fit(args: argparse.Namespace) -> int:
    from perfmodel.runtime import fit_model, model_path, save_model
    from store.db import Store

    params = {"n_estimators": args.trees} if args.model == "forest" and args.trees else {}
    if args.trees is not None and args.trees < 1:
        raise PerftuneInputError("--trees must be at least 1")
    with Store(args.db, read_only=True) as store:
        model, meta = fit_model(store, kind=args.model, devices=args.device,
                                target=args.target, **params)
    path = save_model(args.out or model_path(args.target), model, meta)
    print(f"trained a {args.target} {args.model} on {meta['rows']} measurements of "
          f"{meta['problems']} problems ({', '.join(meta['devices'])}); saved {path}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import pandas as pd

    from collectors.problems import normalize_dtype, parse_problem
    from perfmodel.runtime import DEFAULT_MODEL, Predictor, parse_config
    from store.db import Store

    dtype = normalize_dtype(args.dtype)
    problem = parse_problem(args.problem, ("m", "n", "k"), dtype)
    predictor = Predictor.load(args.model or DEFAULT_MODEL)
    sizes = problem.sizes
    with Store(args.db, read_only=True) as store:
        if args.config is not None or args.dataflow == "cublas":
            if not args.dataflow:
                raise PerftuneInputError("--config needs --dataflow (triton or triton_splitk)")
            config = parse_config(args.config)
            row = pd.DataFrame([{**sizes, "dtype": dtype, "dataflow": args.dataflow,
                                 "device_id": args.device, "config": json.dumps(config),
                                 **config}])
            result = predictor.predict(store, row)
        else:
            dataflows = [args.dataflow] if args.dataflow else None
            ranked = predictor.rank(store, m=sizes["m"], n=sizes["n"], k=sizes["k"],
                                    dtype=dtype, device=args.device, dataflows=dataflows,
                                    objective=args.objective, energy_top=args.top)
            result = ranked.head(args.top)
    columns = [c for c in ("dataflow", "config", "predicted_ms", "low_ms", "high_ms",
                           "predicted_power_w", "predicted_energy_j", "bound",
                           "attainable_fraction", "trained_on_device") if c in result]
    shown = result[columns]
    if args.json:
        print(shown.to_json(orient="records", indent=2))
    else:
        _print_frame(shown.round(4), f"{problem} on {args.device} (model {predictor.meta['kind']}"
                     f", trained on {', '.join(predictor.meta['devices'])})")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import pandas as pd

    from perfmodel.report import evaluate
    from perfmodel.runtime import DEFAULT_MODEL, Predictor
    from store.db import Store

    predictor = Predictor.load(args.model or DEFAULT_MODEL)
    with Store(args.db, read_only=True) as store:
        metrics = evaluate(predictor, store, args.out, device=args.device)
    _print_frame(pd.DataFrame(metrics).T.round(4).reset_index(names="device"),
                 f"held-out accuracy of {predictor.meta['kind']} ({args.out}/index.html)")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from collectors.problems import normalize_dtype, parse_problem
    from perfmodel.runtime import DEFAULT_MODEL, Predictor
    from store.db import Store
    from tuner._base import Backend, Problem
    from tuner.replay import ReplayBackend
    from tuner.search import METHODS, OBJECTIVES, tune

    dtype = normalize_dtype(args.dtype)
    sizes = parse_problem(args.problem, ("m", "n", "k"), dtype).sizes
    if args.budget < 1:
        raise PerftuneInputError(f"--budget must be at least 1, not {args.budget}")
    if args.method not in METHODS:
        raise PerftuneInputError(f"unknown --method {args.method!r}; choose from "
                                 f"{', '.join(METHODS)}")
    dataflows = tuple(d.strip() for d in args.dataflows.split(",")) if args.dataflows else None
    objectives = tuple(o.strip() for o in args.objectives.split(",") if o.strip())
    if not objectives or any(o not in OBJECTIVES for o in objectives):
        raise PerftuneInputError(f"unknown --objectives {args.objectives!r}; use time or "
                                 "time,energy")
    energy = "energy" in objectives
    if not 0 <= args.max_time_loss < 1 or args.energy_window <= 0:
        raise PerftuneInputError("--max-time-loss must be in [0, 1) and --energy-window "
                                 "positive")
    problem = Problem(sizes["m"], sizes["n"], sizes["k"], dtype, args.device)
    console = _console()
    with Store(args.db, read_only=args.backend == "replay") as store:
        backend: Backend
        if args.backend == "live":
            from tuner.live import LiveBackend

            backend = LiveBackend(store, seed=args.seed, energy=energy,
                                  energy_window_s=args.energy_window)
            problem = Problem(sizes["m"], sizes["n"], sizes["k"], dtype, backend.device_id)
        else:
            if not args.device:
                raise PerftuneInputError("--device is needed to replay a device's "
                                         "measurements (see `perftune db stats`)")
            backend = ReplayBackend(store, energy=energy)
        predictor = None
        if args.method == "model":
            predictor = (Predictor.load(args.model) if args.model is not None else
                         Predictor.load_or_train(DEFAULT_MODEL, store, console.print))

        def show(result: Any) -> None:
            trial, best = result.trials[-1], result.best
            if not args.json:
                console.print(f"trial {len(result.trials):3d}: {trial.dataflow:13s} "
                              f"{trial.config:80s} {_ms(trial.runtime_ms)}"
                              + (f" {_joules(trial.energy_j)}" if energy else "")
                              + f"   best {_ms(best.runtime_ms if best else None)}")

        try:
            result = tune(problem, backend, budget=args.budget, method=args.method,
                          dataflows=dataflows, predictor=predictor, store=store,
                          seed=args.seed, storage=args.storage, objectives=objectives,
                          on_trial=show)
        finally:
            backend.close()
    best = result.best
    library = result.best_of("cublas")
    answer = {"problem": args.problem, "dtype": dtype, "device": problem.device,
              "backend": args.backend,
              "method": args.method, "measurements": len(result.trials),
              "stopped_early": result.stopped_early,
              "dataflow": best.dataflow if best else None,
              "config": json.loads(best.config) if best else None,
              "runtime_ms": best.runtime_ms if best else None,
              "cublas_ms": library.runtime_ms if library else None,
              "trials": [vars(t) for t in result.trials]}
    saving = result.energy_saving(args.max_time_loss) if energy else None
    front = result.pareto_front() if energy else []
    if energy:
        answer["pareto_front"] = [vars(t) for t in front]
        answer["energy_saving"] = None if saving is None else {
            "max_time_loss": saving.max_time_loss, "time_loss": saving.time_loss,
            "energy_saved": saving.energy_saved, "fastest": vars(saving.fastest),
            "frugal": vars(saving.frugal)}
    if args.json:
        print(json.dumps(answer, indent=2))
    elif best:
        versus = (f", {library.runtime_ms / best.runtime_ms:.3f}x cuBLAS"  # type: ignore[operator]
                  if library and best.dataflow != "cublas" else "")
        console.print(f"best: {best.dataflow} {best.config} {_ms(best.runtime_ms)}{versus} "
                      f"after {len(result.trials)} measurements"
                      + (" (stopped early: the model expects nothing better)"
                         if result.stopped_early else ""))
    if energy and not args.json:
        _print_front(console, front, saving)
    return 0


def _print_front(console: Any, front: list[Any], saving: Any) -> None:
    console.print(f"time-energy Pareto front ({len(front)} configs, fastest first):")
    for trial in front:
        console.print(f"  {trial.dataflow:13s} {trial.config:80s} {_ms(trial.runtime_ms)} "
                      f"{_joules(trial.energy_j)} {trial.power_w or 0:.0f} W")
    if saving is not None:
        console.print(f"within {saving.max_time_loss:.0%} of the fastest: {saving.energy_saved:.1%}"
                      f" less energy per call ({saving.frugal.dataflow} {saving.frugal.config}, "
                      f"{saving.time_loss:+.1%} time)")


def _ms(value: float | None) -> str:
    return "failed" if value is None else f"{value:.4f} ms"


def _joules(value: float | None) -> str:
    return "no energy" if value is None else f"{value * 1e3:.3f} mJ"


def cmd_db(args: argparse.Namespace) -> int:
    from store.db import Store

    if args.db_command is None:
        raise PerftuneInputError("give a db command: stats, export, import, init, migrate or "
                                 "compact")
    if args.db_command == "migrate":
        with Store(args.db) as store:
            print(f"{store.path}: schema v{store.schema_version()}")
        return 0
    if args.db_command == "init":
        from store.dataset import build_store

        counts = build_store(args.db)
        print("loaded the shipped dataset (new rows; refreshed: stored rows it measured "
              "later): "
              + ", ".join(f"{k} {v}" for k, v in counts.items()))
        return 0
    if args.db_command == "compact":
        from store.db import compact_store, default_db_path

        path = args.db or default_db_path()
        before, after = compact_store(path)
        print(f"compacted {path}: {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB")
        return 0
    if args.db_command == "import":
        from store.db import read_export

        read_export(args.directory)  # check before the store is opened for writing
        with Store(args.db) as store:
            counts = store.import_parquet(args.directory)
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
        frame = store.stats()
        if args.json:
            print(frame.to_json(orient="records", indent=2))
            return 0
        _print_frame(frame, f"perftune store {store.path} (schema v{store.schema_version()})")
    return 0


def _print_frame(frame: Any, title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for column in frame.columns:
        table.add_column(str(column))
    for row in frame.itertuples(index=False):
        table.add_row(*(str(v) for v in row))
    if frame.empty:
        table.caption = "no measurements yet: run `perftune collect`"
    _console().print(table)


if __name__ == "__main__":
    os._exit(main())
