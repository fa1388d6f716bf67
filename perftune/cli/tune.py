"""`perftune tune`: find the best dataflow and config of a problem in few measurements."""

from __future__ import annotations

import argparse
import contextlib
import json
from typing import Any

from perftune.cli._common import (
    db_option,
    family_problem,
    fraction,
    make_console,
    model_option,
    non_negative_int,
    positive_float,
    positive_int,
    problem_options,
)
from perftune.errors import PerftuneInputError


def register(sub: Any) -> None:
    tune = sub.add_parser(
        "tune", help="find the best dataflow and config of a problem in few measurements",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Search a problem's dataflows and configs (any family: --family) with at "
        "most --budget\nmeasurements. Methods: model (perftune: the library first, then the "
        "model's best\ncandidates, corrected as measurements arrive, stopping early when "
        "nothing can win),\ntpe / gp / random (Optuna samplers over the conditional space), "
        "tutorial (the Triton\ntutorial's 8 GEMM configs), nvmmh (NVIDIA's "
        "nvMatmulHeuristics for GEMM, mapped to our\nspace), library (the family's library "
        "alone: cuBLAS, torch, SDPA; cublas names it for GEMM).\nBackends: replay answers "
        "from the store's recorded measurements (CPU; only recorded configs\ncan be proposed); "
        "live measures on this machine's GPU through the collector (checked,\nisolated, "
        "stored; stored ones are reused), or under the Triton interpreter without one.\n"
        "With --objectives time,energy it also measures NVML energy per call (live: a GPU; "
        "replay:\nrecorded energy) and prints the time-energy Pareto front and the energy "
        "that --max-time-loss saves.",
        epilog="examples:\n  perftune tune --problem 64x11008x4096 --device "
        "nvidia-h100-80gb-hbm3 --budget 8\n  perftune tune --problem 64x11008x4096 --backend "
        "live --objectives time,energy --budget 16")
    problem_options(tune, device_required=False)
    tune.add_argument("--budget", type=positive_int, default=8,
                      help="most measurements (default 8)")
    tune.add_argument("--method", default="model",
                      help="model (default), tpe, gp, random, tutorial (GEMM), nvmmh (GEMM: "
                      "NVIDIA's nvMatmulHeuristics), or library (the family's library alone; "
                      "cublas for GEMM)")
    tune.add_argument("--dataflows", help="comma-separated subset, e.g. triton")
    tune.add_argument("--backend", choices=["replay", "live"], default="replay",
                      help="replay recorded measurements (default) or measure live")
    tune.add_argument("--seed", type=non_negative_int, default=0)
    tune.add_argument("--objectives", default="time",
                      help="time (default), or time,energy for the time-energy front")
    tune.add_argument("--max-time-loss", type=fraction, default=0.05,
                      help="with energy: the slowdown accepted to save energy (default 0.05)")
    tune.add_argument("--energy-window", type=positive_float, default=1.0,
                      help="live energy: NVML window per config in seconds (default 1; "
                      "shorter windows are noisier, and under 0.9 s not trusted for models)")
    tune.add_argument("--storage", help="Optuna storage URL to keep the study in, e.g. "
                      "sqlite:///tune.db (view with optuna-dashboard)")
    model_option(tune, "; trained on the fly when missing")
    tune.add_argument("--json", action="store_true", help="print JSON")
    db_option(tune)
    tune.set_defaults(handler=cmd_tune)


def cmd_tune(args: argparse.Namespace) -> int:
    from perftune.model.runtime import Predictor, model_path
    from perftune.store.db import Store
    from perftune.tune._base import Backend
    from perftune.tune.replay import ReplayBackend
    from perftune.tune.search import METHODS, OBJECTIVES, tune

    family, asked = family_problem(args)
    dtype = asked.dtype
    if args.method not in METHODS:
        raise PerftuneInputError(f"unknown --method {args.method!r}; choose from "
                                 f"{', '.join(METHODS)}")
    dataflows = tuple(d.strip() for d in args.dataflows.split(",")) if args.dataflows else None
    objectives = tuple(o.strip() for o in args.objectives.split(",") if o.strip())
    if not objectives or any(o not in OBJECTIVES for o in objectives):
        raise PerftuneInputError(f"unknown --objectives {args.objectives!r}; use time or "
                                 "time,energy")
    energy = "energy" in objectives
    live = args.backend == "live"
    if not live and not args.device:
        raise PerftuneInputError("--device is needed to replay a device's measurements (see "
                                 "`perftune db stats`)")
    problem = asked.on(args.device)
    console = make_console()
    notices = make_console(stderr=True)  # beside --json's output, never in it
    with Store(args.db, read_only=not live) as store:
        predictor = None
        if args.method == "model":
            predictor = (Predictor.load(args.model) if args.model is not None else
                         Predictor.load_or_train(model_path("runtime", family=family.name),
                                                 store, notices.print, family=args.family))

        def show(result: Any) -> None:
            trial, best = result.trials[-1], result.best
            if not args.json:
                console.print(f"trial {len(result.trials):3d}: {trial.dataflow:13s} "
                              f"{trial.config:80s} {_ms(trial.runtime_ms)}"
                              + (f" {_joules(trial.energy_j)}" if energy else "")
                              + f"   best {_ms(best.runtime_ms if best else None)}")

        # Live, a signal asks the tuner to stop before its next measurement.
        with args.stop.polled() if live else contextlib.nullcontext():
            backend: Backend
            if live:
                from perftune.tune.live import LiveBackend

                backend = LiveBackend(store, seed=args.seed, energy=energy,
                                      energy_window_s=args.energy_window, stop=args.stop,
                                      family=args.family)
                problem = asked.on(backend.device_id)
            else:
                backend = ReplayBackend(store, energy=energy, family=args.family)
            try:
                result = tune(problem, backend, budget=args.budget, method=args.method,
                              dataflows=dataflows, predictor=predictor, store=store,
                              seed=args.seed, storage=args.storage, objectives=objectives,
                              on_trial=show)
            finally:
                backend.close()
    best = result.best
    library = result.best_of(family.library_dataflow or "")
    answer = {"family": family.name, "problem": args.problem, "dtype": dtype,
              "device": problem.device,
              "backend": args.backend,
              "method": args.method, "measurements": len(result.trials),
              "stopped_early": result.stopped_early,
              "dataflow": best.dataflow if best else None,
              "config": json.loads(best.config) if best else None,
              "runtime_ms": best.runtime_ms if best else None,
              "library_dataflow": family.library_dataflow,
              "library_ms": library.runtime_ms if library else None,
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
        versus = (f", {library.runtime_ms / best.runtime_ms:.3f}x "  # type: ignore[operator]
                  f"{family.library_dataflow}" if library and best is not library else "")
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


