"""Decode attention on held-out problems: perftune's live tune beside SDPA, on the GPU.

    python -m benchmarks.decode_attention_live [--db STORE] [--budget 10] [--problems 5]

For the first ``--problems`` problems of perftune/data/problems/decode_attention_heldout.csv:

1. tunes each one live, as ``perftune tune --family decode_attention --backend live`` does:
   the model-guided tuner (the forest trained on the shipped data, held-out problems left
   out) with at most ``--budget`` measurements, compile included, across both dataflows,
   into a fresh store; its answer is ``tuned``;
2. takes the fastest ok ``triton_splitkv`` config that STORE holds for this GPU (default: a
   store built from the shipped data, whose held-out problems were swept over the whole
   space) as ``best``;
3. checks both against the float64 reference on fresh inputs, then times, in the same
   process and interleaved over ``--rounds`` rounds, ``tuned``, ``best``,
   ``torch.nn.functional.scaled_dot_product_attention`` alone (``enable_gqa``; its output
   left where SDPA puts it) and the family's ``sdpa`` dataflow (SDPA plus the copy into the
   output tensor, as the sweep times it).

Each time is triton.testing.do_bench's median (L2 flushed before every repetition); a
problem's time is the median of its rounds. ``sdpa_over_tuned`` is SDPA alone over the
tuner's answer (above 1, the tuned answer is faster); ``tuned_over_best`` is the best swept
config's time over the tuner's answer (1 when the tune found the best).
Writes benchmarks/results/decode_attention_live.json. On a machine without a GPU it runs
under the Triton interpreter with wall-clock times (a smoke test; nothing is written unless
``--out`` is given).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._timing import Timer, side_by_side_timer

RESULTS = Path(__file__).resolve().parent / "results"
FAMILY = "decode_attention"


def _timer(gpu: bool) -> Timer:
    return side_by_side_timer(gpu, rep_ms=200)


def _tune(problem: Any, budget: int, method: str, predictor: Any, device_row: Any,
          path: Path) -> dict[str, Any]:
    """The live tune of one problem into a fresh store (holding the shipped calibration of
    the device, which the model reads): its answer, how many measurements it took and its
    wall time (compilation included)."""
    from perftune.store.db import Store
    from perftune.tune.live import LiveBackend
    from perftune.tune.search import tune

    started = time.perf_counter()
    with Store(path) as store:
        if not device_row.empty:
            store.insert("devices", device_row)
        backend = LiveBackend(store, family=FAMILY)
        try:
            result = tune(problem.on(backend.device_id), backend, budget=budget,
                          method=method, predictor=predictor, store=store)
        finally:
            backend.close()
    best = result.best
    if best is None:
        raise SystemExit(f"{problem}: the live tune measured nothing that passed")
    return {"dataflow": best.dataflow, "config": json.loads(best.config),
            "measurements": len(result.trials), "tuned_ms_in_tune": best.runtime_ms,
            "wall_s": time.perf_counter() - started}


def _best_config(store: Any, device_id: str, problem: Any,
                 required: bool) -> tuple[dict[str, int] | None, float | None, float | None,
                                          int]:
    """The fastest stored ok split-KV config, its stored time, SDPA's stored time and how
    many ok split-KV configs the store holds for the problem (nothing, off the GPU, where
    the store has no sweep of the interpreter)."""
    rows = store.query(
        "SELECT dataflow, config, runtime_ms FROM measurements WHERE family = ? AND "
        "device_id = ? AND dtype = ? AND shape = ? AND status = 'ok' ORDER BY runtime_ms",
        [FAMILY, device_id, problem.dtype, problem.shape])
    triton_rows = rows[rows["dataflow"] == "triton_splitkv"]
    if triton_rows.empty and not required:
        return None, None, None, 0
    if triton_rows.empty:
        raise SystemExit(f"{problem}: no ok triton_splitkv rows in the store for {device_id}")
    sdpa = rows[rows["dataflow"] == "sdpa"]
    best = triton_rows.iloc[0]
    return (json.loads(best["config"]), float(best["runtime_ms"]),
            float(sdpa.iloc[0]["runtime_ms"]) if len(sdpa) else None, len(triton_rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", type=Path, help="store with the held-out whole-space sweep "
                        "(default: one built from the shipped data)")
    parser.add_argument("--budget", type=int, default=10, help="live tune measurements")
    parser.add_argument("--method", default="model", help="tuner method (the model needs "
                        "the device's calibration in the store: `random` off the GPU)")
    parser.add_argument("--problems", type=int, default=5)
    parser.add_argument("--problems-file", type=Path, help="default: the held-out list")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, help="result file (default on a GPU: "
                        "benchmarks/results/decode_attention_live.json)")
    args = parser.parse_args()

    from perftune.collect.device import GPU, identify, select_mode, torch_device

    mode = select_mode(None)  # before anything imports triton
    gpu = mode == GPU
    import torch

    from perftune.collect.families import load_family
    from perftune.collect.problems import read_problems_file
    from perftune.model.runtime import Predictor, fit_model
    from perftune.settings import PROBLEMS_DIR
    from perftune.store.dataset import build_store
    from perftune.store.db import Store

    family = load_family(FAMILY)
    device = torch_device(mode)
    identity = identify(mode)
    listing = args.problems_file or PROBLEMS_DIR / "decode_attention_heldout.csv"
    problems = read_problems_file(listing, family.dims, "fp16", FAMILY)[:args.problems]
    timer = _timer(gpu)
    results = []
    work = Path(tempfile.mkdtemp(prefix="decode-live-"))
    db = args.db
    if db is None:
        db = work / "shipped.duckdb"
        build_store(db)
    with Store(db, read_only=True) as store:
        predictor = Predictor(*fit_model(store, family=FAMILY))
        device_row = store.query("SELECT * FROM devices WHERE device_id = ?",
                                 [identity["device_id"]])
        stored = {p.shape + p.dtype: _best_config(store, identity["device_id"], p, gpu)
                  for p in problems}
    tunes = {p.shape + p.dtype: _tune(p, args.budget, args.method, predictor, device_row,
                                      work / f"live-{i}.duckdb")
             for i, p in enumerate(problems)}
    for index, problem in enumerate(problems):
        config, stored_best, stored_sdpa, swept = stored[problem.shape + problem.dtype]
        tuned = tunes[problem.shape + problem.dtype]
        inputs = family.make_inputs(problem, device, 1000 + index)  # not the sweep's inputs
        reference = family.reference(problem, inputs)
        q, k, v = inputs["q"], inputs["k"], inputs["v"]
        scale = 1.0 / math.sqrt(problem["head_dim"])
        gqa = problem["heads"] != problem["kv_heads"]
        q4 = q.unsqueeze(2)

        def sdpa_alone(q4: Any = q4, k: Any = k, v: Any = v, gqa: bool = gqa,
                       scale: float = scale) -> None:
            torch.nn.functional.scaled_dot_product_attention(q4, k, v, scale=scale,
                                                             enable_gqa=gqa)

        fns = {"tuned": family.launcher(problem, tuned["dataflow"], tuned["config"], inputs),
               "sdpa": sdpa_alone,
               "sdpa_dataflow": family.launcher(problem, "sdpa", {}, inputs)}
        if config is not None:
            fns["best"] = family.launcher(problem, "triton_splitkv", config, inputs)
        errors = {}
        for name in [n for n in fns if n != "sdpa"]:
            inputs["out"].fill_(float("nan"))
            fns[name]()
            if gpu:
                torch.cuda.synchronize()
            error = float((inputs["out"].float() - reference).norm() / reference.norm())
            if not error <= family.tolerance(problem.dtype):
                raise SystemExit(f"{problem} {name}: relative error {error}")
            errors[name] = error
        del reference
        times: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(args.rounds):
            for name, fn in fns.items():
                times[name].append(timer(fn))
        median = {name: statistics.median(t) for name, t in times.items()}
        spread = {name: (max(t) - min(t)) / statistics.median(t) for name, t in times.items()}
        cost = family.cost(problem)
        results.append({
            "problem": problem.shape, "dtype": problem.dtype,
            "kv_cache_mib": 2 * problem["batch"] * problem["kv_heads"] * problem["context"]
            * problem["head_dim"] * problem.element_bytes / 2**20,
            "tuned": tuned, "tuned_ms": median["tuned"],
            "best_config": config, "configs_swept": swept, "best_ms": median.get("best"),
            "sdpa_ms": median["sdpa"], "sdpa_dataflow_ms": median["sdpa_dataflow"],
            "sdpa_over_tuned": median["sdpa"] / median["tuned"],
            "tuned_over_best": median["best"] / median["tuned"] if "best" in median else None,
            "tuned_gbps": cost.bytes / (median["tuned"] * 1e-3) / 1e9,
            "sdpa_gbps": cost.bytes / (median["sdpa"] * 1e-3) / 1e9,
            "round_spread": spread, "rel_error": errors,
            "stored_best_ms": stored_best, "stored_sdpa_ms": stored_sdpa,
        })
        del inputs, fns
        if gpu:
            torch.cuda.empty_cache()

    def geomean_of(key: str) -> float | None:
        values = [r[key] for r in results if r[key] is not None]
        return math.exp(statistics.mean(math.log(v) for v in values)) if values else None

    summary = {
        "device": identity["name"], "device_id": identity["device_id"],
        "software": identity["software"],
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"),
        "command": "python -m benchmarks.decode_attention_live " + " ".join(sys.argv[1:]),
        "timer": "triton.testing.do_bench median (L2 flushed), median of rounds" if gpu
        else "wall clock under the Triton interpreter (not GPU times)",
        "budget": args.budget, "rounds": args.rounds, "problems": results,
        "geomean_sdpa_over_tuned": geomean_of("sdpa_over_tuned"),
        "geomean_tuned_over_best": geomean_of("tuned_over_best"),
        "mean_tune_wall_s": statistics.mean(r["tuned"]["wall_s"] for r in results),
    }
    out = args.out or (RESULTS / "decode_attention_live.json" if gpu else None)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{'problem':55} {'dtype':5} {'tuned ms':>9} {'sdpa ms':>9} {'sdpa/tuned':>10} "
          f"{'best/tuned':>10}  tuned")
    for r in results:
        best = r["tuned_over_best"]
        print(f"{r['problem']:55} {r['dtype']:5} {r['tuned_ms']:9.4f} {r['sdpa_ms']:9.4f} "
              f"{r['sdpa_over_tuned']:10.3f} {'-' if best is None else f'{best:10.3f}':>10}  "
              f"{r['tuned']['dataflow']} {json.dumps(r['tuned']['config'])}")
    print(f"geomean sdpa/tuned {summary['geomean_sdpa_over_tuned']:.3f}, best/tuned "
          f"{summary['geomean_tuned_over_best']}" + (f"; wrote {out}" if out else ""))


if __name__ == "__main__":
    main()
