"""Decode attention on held-out problems: the best measured split-KV config beside SDPA, live.

    python -m benchmarks.decode_attention_live --db STORE [--problems 5] [--rounds 3]

For the first ``--problems`` problems of perftune/data/problems/decode_attention_heldout.csv,
takes the fastest ok ``triton_splitkv`` config that STORE holds for this GPU (a whole-space
sweep of those problems), checks it and SDPA against the float64 reference on fresh inputs,
then times, in the same process and interleaved over ``--rounds`` rounds, the config,
``torch.nn.functional.scaled_dot_product_attention`` alone (``enable_gqa``; its output left
where SDPA puts it) and the family's ``sdpa`` dataflow (SDPA plus the copy into the output
tensor, as the sweep times it). Each time is triton.testing.do_bench's median (L2 flushed
before every repetition); a problem's time is the median of its rounds. ``sdpa_over_best``
is SDPA alone over the best config: above 1, the tuned kernel is faster.
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
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
FAMILY = "decode_attention"


def _timer(gpu: bool) -> Callable[[Callable[[], None]], float]:
    if gpu:
        import triton.testing

        return lambda fn: float(triton.testing.do_bench(fn, warmup=25, rep=200,
                                                        return_mode="median"))

    def wall(fn: Callable[[], None]) -> float:
        fn()
        samples = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - start) * 1e3)
        return statistics.median(samples)

    return wall


def _best_config(store: Any, device_id: str, problem: Any) -> tuple[dict[str, int], float,
                                                                     float | None, int]:
    """The fastest stored ok split-KV config, its stored time, SDPA's stored time and how
    many ok split-KV configs the store holds for the problem."""
    rows = store.query(
        "SELECT dataflow, config, runtime_ms FROM measurements WHERE family = ? AND "
        "device_id = ? AND dtype = ? AND shape = ? AND status = 'ok' ORDER BY runtime_ms",
        [FAMILY, device_id, problem.dtype, problem.shape])
    triton_rows = rows[rows["dataflow"] == "triton_splitkv"]
    if triton_rows.empty:
        raise SystemExit(f"{problem}: no ok triton_splitkv rows in the store for {device_id}")
    sdpa = rows[rows["dataflow"] == "sdpa"]
    best = triton_rows.iloc[0]
    return (json.loads(best["config"]), float(best["runtime_ms"]),
            float(sdpa.iloc[0]["runtime_ms"]) if len(sdpa) else None, len(triton_rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", type=Path, required=True, help="store with the held-out sweep")
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
    from perftune.settings import PROBLEMS_DIR
    from perftune.store.db import Store

    family = load_family(FAMILY)
    device = torch_device(mode)
    identity = identify(mode)
    listing = args.problems_file or PROBLEMS_DIR / "decode_attention_heldout.csv"
    problems = read_problems_file(listing, family.dims, "fp16", FAMILY)[:args.problems]
    timer = _timer(gpu)
    results = []
    with Store(args.db, read_only=True) as store:
        chosen = [(p, *_best_config(store, identity["device_id"], p)) for p in problems]
    for index, (problem, config, stored_best, stored_sdpa, swept) in enumerate(chosen):
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

        fns = {"best": family.launcher(problem, "triton_splitkv", config, inputs),
               "sdpa": sdpa_alone,
               "sdpa_dataflow": family.launcher(problem, "sdpa", {}, inputs)}
        errors = {}
        for name in ("best", "sdpa_dataflow"):
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
            "best_config": config, "configs_swept": swept,
            "best_ms": median["best"], "sdpa_ms": median["sdpa"],
            "sdpa_dataflow_ms": median["sdpa_dataflow"],
            "sdpa_over_best": median["sdpa"] / median["best"],
            "best_gbps": cost.bytes / (median["best"] * 1e-3) / 1e9,
            "sdpa_gbps": cost.bytes / (median["sdpa"] * 1e-3) / 1e9,
            "round_spread": spread, "rel_error": errors,
            "stored_best_ms": stored_best, "stored_sdpa_ms": stored_sdpa,
        })
        del inputs, fns
        if gpu:
            torch.cuda.empty_cache()

    ratios = [r["sdpa_over_best"] for r in results]
    summary = {
        "device": identity["name"], "device_id": identity["device_id"],
        "software": identity["software"],
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"),
        "command": "python -m benchmarks.decode_attention_live " + " ".join(sys.argv[1:]),
        "timer": "triton.testing.do_bench median (L2 flushed), median of rounds" if gpu
        else "wall clock under the Triton interpreter (not GPU times)",
        "rounds": args.rounds, "problems": results,
        "geomean_sdpa_over_best": math.exp(statistics.mean(math.log(r) for r in ratios)),
    }
    out = args.out or (RESULTS / "decode_attention_live.json" if gpu else None)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{'problem':55} {'dtype':5} {'best ms':>9} {'sdpa ms':>9} {'sdpa/best':>9}  config")
    for r in results:
        print(f"{r['problem']:55} {r['dtype']:5} {r['best_ms']:9.4f} {r['sdpa_ms']:9.4f} "
              f"{r['sdpa_over_best']:9.2f}  {json.dumps(r['best_config'])}")
    print(f"geomean sdpa/best {summary['geomean_sdpa_over_best']:.3f}"
          + (f"; wrote {out}" if out else ""))


if __name__ == "__main__":
    main()
