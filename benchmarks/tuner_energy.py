"""Time and energy, live on the GPU: the Pareto front of GEMM configs and the energy that a
small slowdown saves, on held-out whole-space H100 problems, in one run.

    python -m benchmarks.tuner_energy --store STORE     # on a GPU

For each problem (the held-out whole-space ones, the most work first): perftune's
model-guided tuner, Optuna's multi-objective TPE and random search, each with ``--budget``
measurements and objectives (time, energy), live through the collector (timings already in
the store are reused; energy per call is measured through NVML and added to the store); then
a reference: energy of the ``--reference`` fastest configs of the whole space (their timings
are known). Reported per method: its front, and the energy per call saved within
``--max-time-loss`` of the fastest config it measured and of the whole space's fastest config.

    python -m benchmarks.tuner_energy --analyze STORE   # CPU, after the run

adds, from every energy row of those problems in the store (the run's measurements), the front
across dataflows and within the ``triton`` dataflow, with the energy *and the average power*
(the figure power studies often report) saved within the time-loss limit.
Saves benchmarks/results/tuner_energy.json. STORE is a writable store that holds the problems'
whole-space timings, e.g. one built from the shipped dataset with ``perftune db init --db STORE``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from perftune.collect.problems import Problem
from perftune.model.runtime import Predictor, fit_model
from perftune.store.dataset import build_store
from perftune.store.db import Store
from perftune.store.rules import BUSY_SQL
from perftune.tune.search import Trial, TuneResult, tune

RESULTS = Path(__file__).resolve().parent / "results"

METHODS = {"perftune": "model", "optuna_tpe": "tpe", "random": "random"}
OBJECTIVES = ("time", "energy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path,
                        help="writable store holding the problems' whole-space timings")
    parser.add_argument("--analyze", type=Path, metavar="STORE",
                        help="CPU: add the front analysis of the results' problems from STORE")
    parser.add_argument("--problems", type=int, default=3,
                        help="how many held-out whole-space problems, the most work first")
    parser.add_argument("--budget", type=int, default=12)
    parser.add_argument("--reference", type=int, default=24,
                        help="fastest configs of the whole space measured for energy")
    parser.add_argument("--max-time-loss", type=float, default=0.05)
    parser.add_argument("--results", type=Path,
                        default=RESULTS / "tuner_energy.json")
    args = parser.parse_args()
    if args.analyze:
        result = json.loads(args.results.read_text())
        with Store(args.analyze, read_only=True) as store:
            result["fronts"] = [analyze(store, row["problem"], result["max_time_loss"])
                                for row in result["problems"]]
        args.results.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result["fronts"], indent=2))
        return
    if args.store is None:
        parser.error("--store is needed for a run (or --analyze STORE after one)")
    import torch

    if not torch.cuda.is_available():
        sys.exit("tuner_energy measures NVML energy on a GPU; no CUDA GPU is visible")
    from benchmarks.tuner_budget import H100, whole_space_heldout

    shipped = Path(tempfile.mkdtemp(prefix="tuner-energy-")) / "shipped.duckdb"
    build_store(shipped)
    with Store(shipped, read_only=True) as store:
        model, meta = fit_model(store, devices=[H100])
        problems = sorted(whole_space_heldout(store), key=lambda p: -p.m * p.n * p.k
                          )[:args.problems]
    predictor = Predictor(model, meta)
    rows = []
    for problem in problems:
        record = measure_problem(args, problem, predictor)
        rows.append(record)
        print(json.dumps(_summary_line(record)), flush=True)
        result = {"device": torch.cuda.get_device_name(0), "date": dt.date.today().isoformat(),
                  "command": " ".join(["python -m benchmarks.tuner_energy", *sys.argv[1:]]),
                  "budget": args.budget,
                  "max_time_loss": args.max_time_loss, "problems": rows,
                  "summary": summarize(rows)}
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summarize(rows), indent=2))


def measure_problem(args: argparse.Namespace, problem: Problem, predictor: Predictor
                    ) -> dict[str, Any]:
    from perftune.tune.live import LiveBackend

    record: dict[str, Any] = {"problem": f"{problem.shape} {problem.dtype}"}
    with Store(args.store) as store:
        backend = LiveBackend(store, energy=True, energy_window_s=0.5)
        try:
            for name, method in METHODS.items():
                started = time.perf_counter()
                result = tune(problem, backend, budget=args.budget, method=method,
                              predictor=predictor, store=store, objectives=OBJECTIVES)
                record[name] = _report(result, args.max_time_loss,
                                       wall_s=time.perf_counter() - started)
            fastest = store.query(
                "SELECT dataflow, config FROM measurements WHERE device_id = ? AND shape = ? "
                "AND dtype = ? AND status = 'ok' ORDER BY runtime_ms LIMIT ?",
                [problem.device, problem.shape, problem.dtype, args.reference])
            reference = TuneResult("reference", problem, objectives=OBJECTIVES)
            for dataflow, config in zip(fastest["dataflow"], fastest["config"], strict=True):
                measured = backend.measure(problem, dataflow, config)
                reference.trials.append(Trial(dataflow, config, measured.runtime_ms,
                                              measured.energy_j, measured.power_w))
        finally:
            backend.close()
    record["reference"] = _report(reference, args.max_time_loss)
    fastest_known = reference.energy_saving(args.max_time_loss)
    for name in METHODS:  # the method's frugal pick against the whole space's fastest config
        frugal = record[name]["frugal"]
        if fastest_known is not None and frugal is not None:
            record[name]["vs_fastest_known"] = {
                "time_loss": frugal["runtime_ms"] / fastest_known.fastest.runtime_ms - 1,
                "energy_saved": 1 - frugal["energy_j"] / fastest_known.fastest.energy_j}
    return record


def analyze(store: Store, problem: str, max_time_loss: float) -> dict[str, Any]:
    """The front of every energy-measured config of ``problem`` ("m=..,n=..,k=.. dtype"),
    across dataflows and within triton, and what the time-loss limit saves."""
    from benchmarks.tuner_budget import H100

    shape, dtype = problem.split()
    rows = store.query("SELECT dataflow, config, runtime_ms, energy_per_call_j, avg_power_w "
                       "FROM measurements WHERE device_id = ? AND shape = ? AND dtype = ? AND "
                       f"{BUSY_SQL} AND status = 'ok'", [H100, shape, dtype])
    out: dict[str, Any] = {"problem": problem, "energy_rows": len(rows)}
    for scope, chosen in (("across_dataflows", rows),
                          ("within_triton", rows[rows["dataflow"] == "triton"])):
        result = TuneResult("measured", Problem.of(dtype, m=0, n=0, k=0).on(H100),
                            objectives=OBJECTIVES,
                            trials=[Trial(r.dataflow, r.config, r.runtime_ms,
                                          r.energy_per_call_j, r.avg_power_w)
                                    for r in chosen.itertuples()])
        saving = result.energy_saving(max_time_loss)
        if saving is None:
            continue
        limit = saving.fastest.runtime_ms * (1 + max_time_loss)  # type: ignore[operator]
        calm = min((t for t in result.with_energy if _figures(t)[0] <= limit),
                   key=lambda t: _figures(t)[2])
        fast = _figures(saving.fastest)
        slow = _figures(calm)
        out[scope] = {"configs": len(chosen), "front": len(result.pareto_front()),
                      "fastest": vars(saving.fastest), "energy_saved": saving.energy_saved,
                      "time_loss": saving.time_loss, "power_saved": 1 - slow[2] / fast[2],
                      "power_saved_time_loss": slow[0] / fast[0] - 1,
                      "power_saved_energy_change": slow[1] / fast[1] - 1}
    return out


def _figures(trial: Trial) -> tuple[float, float, float]:
    assert trial.runtime_ms and trial.energy_j and trial.power_w
    return trial.runtime_ms, trial.energy_j, trial.power_w


def _report(result: TuneResult, max_time_loss: float, wall_s: float | None = None
            ) -> dict[str, Any]:
    saving = result.energy_saving(max_time_loss)
    return {"measurements": len(result.trials), "wall_s": wall_s,
            "pareto_front": [vars(t) for t in result.pareto_front()],
            "fastest": vars(saving.fastest) if saving else None,
            "frugal": vars(saving.frugal) if saving else None,
            "time_loss": saving.time_loss if saving else None,
            "energy_saved": saving.energy_saved if saving else None}


def _summary_line(record: dict[str, Any]) -> dict[str, Any]:
    return {"problem": record["problem"],
            **{name: record[name]["energy_saved"] for name in [*METHODS, "reference"]}}


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per method, the energy saved within the time-loss limit: against its own fastest
    measured config, and against the whole space's fastest (the reference)."""
    summary: dict[str, Any] = {}
    for name in [*METHODS, "reference"]:
        own = [r[name]["energy_saved"] for r in rows if r[name]["energy_saved"] is not None]
        known = [r[name]["vs_fastest_known"]["energy_saved"] for r in rows
                 if "vs_fastest_known" in r[name]]
        summary[name] = {"energy_saved_mean": sum(own) / len(own) if own else None,
                         "energy_saved_max": max(own) if own else None,
                         "vs_fastest_known_mean": sum(known) / len(known) if known else None}
    return summary


if __name__ == "__main__":
    main()
