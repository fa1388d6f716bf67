"""perftune's ``autotune`` against ``triton.autotune`` on the same kernels and configs.

    python -m benchmarks.autotune_vs_triton [--keys 12] [--budget 8] [--kernels gemm,softmax]

Three kernels: the project's GEMM (ranked by the GEMM family's model), RMSNorm and a fused
online softmax (kernels of no family to the decorator: ``family=False``, so they learn from their
own measurements; RMSNorm's family model needs the row count, which is no kernel argument).
For each kernel and ``--keys`` new keys (sizes), each in a fresh process with an empty Triton
cache (``TRITON_CACHE_DIR``):

1. ``triton.autotune``: the wall time of each key's first call (compile and benchmark all);
2. perftune's ``autotune`` into a fresh store: the same, with how many configs it measured per
   key (the measurements-per-new-key curve: all until the learned model has ``min_keys`` keys);
3. perftune's ``autotune`` again in a new process on that store: every key a lookup. Once
   sharing the first process's Triton cache, as a user's next process does
   (``second_process_s``: its slowest first call), and once with an empty Triton cache
   (``second_process_cold_cache_s``: its slowest first call, the chosen config's compile
   included);
4. the two picks of every key re-timed side by side (``triton.testing.do_bench``, interleaved
   rounds, median).

Reports per kernel and as geomeans: ``first_call_ratio`` (perftune's first-call wall time /
triton.autotune's, summed over the keys), ``speed_ratio`` (runtime of triton.autotune's pick /
runtime of perftune's: 1.0 = as fast), ``second_process_s`` and ``curve`` (configs measured per
new key; ``timed_in_full``: how many of them the full benchmark timed, the rest only screened
by its short run; ``left_out``: configs a key left out while their compile still ran;
``perftune_phases_s``: where each of perftune's first calls spent its time). perftune's
decorator runs with its defaults (``finalists=3``, ``tie_margin=0.05``, one compile process per
core, ``compile_patience=3``), with its own cache (the remembered Triton
installation hash) empty for each kernel's first process. Writes
benchmarks/results/autotune_vs_triton.json (or ``--out``), after each kernel. GPU only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
KERNELS = ("gemm", "rmsnorm", "softmax")

GEMM_KEYS = [(64, 4096, 4096), (128, 11008, 4096), (256, 4096, 11008), (512, 8192, 8192),
             (1024, 1024, 1024), (2048, 2048, 2048), (4096, 4096, 4096), (16, 14336, 4096),
             (32, 4096, 14336), (768, 3072, 3072), (3072, 768, 3072), (8192, 1024, 4096),
             (96, 6144, 2048), (1536, 1536, 6144), (4096, 512, 8192), (256, 256, 16384)]
ROW_KEYS = [(4096, 1024), (4096, 1536), (2048, 2048), (2048, 3072), (1024, 4096), (1024, 5120),
            (512, 6144), (512, 8192), (256, 10240), (256, 12288), (128, 14336), (128, 16384),
            (8192, 768), (8192, 2560), (64, 20480), (64, 32768)]


# -- the kernels ----------------------------------------------------------------------------------
def _softmax_kernel() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def softmax_kernel(out_ptr, in_ptr, n_cols, stride, BLOCK: tl.constexpr):
        """One row per program, read in BLOCK chunks: running max and sum, then the output."""
        row = tl.program_id(0).to(tl.int64)
        src = in_ptr + row * stride
        dst = out_ptr + row * stride
        peak = tl.full((BLOCK,), float("-inf"), tl.float32)
        total = tl.zeros((BLOCK,), tl.float32)
        for start in range(0, n_cols, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            x = tl.load(src + offs, mask=offs < n_cols, other=float("-inf")).to(tl.float32)
            new_peak = tl.maximum(peak, x)
            total = total * tl.exp(peak - new_peak) + tl.where(x > float("-inf"),
                                                               tl.exp(x - new_peak), 0.0)
            peak = new_peak
        row_peak = tl.max(peak, axis=0)
        row_sum = tl.sum(total * tl.exp(peak - row_peak), axis=0)
        for start in range(0, n_cols, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            mask = offs < n_cols
            x = tl.load(src + offs, mask=mask, other=0.0).to(tl.float32)
            tl.store(dst + offs, (tl.exp(x - row_peak) / row_sum).to(dst.dtype.element_ty),
                     mask=mask)

    return softmax_kernel


def kernel_spec(name: str) -> dict[str, Any]:
    """The jitted function, its configs, key, family and how to call it for a key."""
    import itertools

    import torch
    import triton

    if name == "gemm":
        from perftune.collect.families._gemm_kernels import matmul_kernel

        configs = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8},
                                 num_warps=w, num_stages=s)
                   for bm, bn, bk, w, s in itertools.product((64, 128), (64, 128, 256), (32, 64),
                                                             (4, 8), (3, 4))]

        def call(size: tuple[int, ...]) -> tuple[tuple[Any, ...], dict[str, Any], Any, Any]:
            m, n, k = size
            a = torch.randn(m, k, device="cuda", dtype=torch.float16)
            b = torch.randn(k, n, device="cuda", dtype=torch.float16)
            c = torch.empty(m, n, device="cuda", dtype=torch.float16)

            def grid(meta: dict[str, int]) -> tuple[int, int]:
                return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]), 1)

            return ((a, b, c, m, n, k, k, 1, n, 1, 0, n, 1), {"SPLIT_K": 1, "DOT_F32": False},
                    grid, (lambda: a.float() @ b.float(), c))

        return {"fn": matmul_kernel, "configs": configs, "key": ["M", "N", "K"],
                "family": "gemm", "sizes": GEMM_KEYS, "call": call}
    blocks = (256, 512, 1024, 2048, 4096, 8192)
    configs = [triton.Config({"BLOCK_SIZE" if name == "rmsnorm" else "BLOCK": b}, num_warps=w)
               for b, w in itertools.product(blocks, (1, 2, 4, 8, 16))]
    if name == "rmsnorm":
        from perftune.collect.families._rmsnorm_kernels import rmsnorm_kernel

        def call(size: tuple[int, ...]) -> tuple[tuple[Any, ...], dict[str, Any], Any, Any]:
            rows, cols = size
            x = torch.randn(rows, cols, device="cuda", dtype=torch.bfloat16)
            w = torch.randn(cols, device="cuda", dtype=torch.bfloat16)
            out = torch.empty_like(x)

            def reference() -> Any:
                xf = x.float()
                return xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6) * w.float()

            return (x, w, out, cols, 1e-6), {}, (rows,), (reference, out)

        return {"fn": rmsnorm_kernel, "configs": configs, "key": ["N"], "family": False,
                "sizes": ROW_KEYS, "call": call}
    if name == "softmax":
        def call(size: tuple[int, ...]) -> tuple[tuple[Any, ...], dict[str, Any], Any, Any]:
            rows, cols = size
            x = torch.randn(rows, cols, device="cuda", dtype=torch.float16)
            out = torch.empty_like(x)
            return ((out, x, cols, cols), {}, (rows,),
                    (lambda: torch.softmax(x.float(), -1), out))

        return {"fn": _softmax_kernel(), "configs": configs, "key": ["n_cols"], "family": False,
                "sizes": ROW_KEYS, "call": call}
    raise SystemExit(f"unknown kernel {name!r}; choose from {', '.join(KERNELS)}")


# -- the workers (each in a fresh process) --------------------------------------------------------
def worker(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    spec = kernel_spec(args.kernel)
    sizes = spec["sizes"][:args.keys]
    if args.mode == "retime":
        return retime(spec, sizes, json.loads(Path(args.picks).read_text()))
    if args.mode == "triton":
        import triton

        tuned = triton.autotune(configs=spec["configs"], key=spec["key"])(spec["fn"])
    else:
        from perftune.tune.autotune import autotune

        tuned = autotune(spec["configs"], key=spec["key"], budget=args.budget,
                         family=spec["family"], db=args.db, model=args.model,
                         name=f"bench_{args.kernel}")(spec["fn"])
    calls = []
    for size in sizes:
        call_args, meta, grid, (reference, out) = spec["call"](size)
        torch.cuda.synchronize()
        started = time.perf_counter()
        tuned[grid](*call_args, **meta)
        torch.cuda.synchronize()
        wall = time.perf_counter() - started
        expected = reference()
        error = float((out.float() - expected).norm() / expected.norm())
        best = tuned.best_config
        history = tuned.history[-1] if getattr(tuned, "history", None) else {}
        timings = len(getattr(tuned, "configs_timings", {}) or {})
        calls.append({"size": list(size), "first_call_s": wall, "rel_error": error,
                      "config": {"kwargs": best.kwargs, "num_warps": best.num_warps,
                                 "num_stages": best.num_stages},
                      "measured": history.get("measured", timings),
                      "timed_in_full": history.get("timed_in_full", timings),
                      "left_out": history.get("left_out", 0),
                      "phases": history.get("phases", {})})
    return {"calls": calls}


def retime(spec: dict[str, Any], sizes: list[tuple[int, ...]],
           picks: dict[str, list[dict[str, Any]]], rounds: int = 5) -> dict[str, Any]:
    """Both picks of every key, timed in interleaved rounds with do_bench; medians in ms."""
    import statistics

    import triton.testing

    fn = spec["fn"]
    out = []
    for i, size in enumerate(sizes):
        call_args, meta, grid, _ = spec["call"](size)
        times: dict[str, list[float]] = {"triton": [], "perftune": []}
        for _ in range(rounds):
            for which in times:
                pick = picks[which][i]["config"]
                options = {**meta, **pick["kwargs"], "num_warps": pick["num_warps"],
                           "num_stages": pick["num_stages"]}
                times[which].append(triton.testing.do_bench(
                    lambda o=options, g=grid, a=call_args: fn[g](*a, **o)))
        out.append({which: statistics.median(values) for which, values in times.items()})
    return {"runtimes_ms": out}


def _spawn(mode: str, kernel: str, args: argparse.Namespace, cache: str | None = None,
           **extra: str) -> dict[str, Any]:
    """One worker in a fresh process, with an empty Triton cache unless ``cache``."""
    with tempfile.TemporaryDirectory(prefix="triton-cache-") as empty, \
            tempfile.NamedTemporaryFile(suffix=".json") as result:
        cache = cache or empty
        command = [sys.executable, "-m", "benchmarks.autotune_vs_triton", "--worker", mode,
                   "--kernel", kernel, "--keys", str(args.keys), "--budget", str(args.budget),
                   "--result", result.name, *(x for k, v in extra.items()
                                              if k != "perftune_cache"
                                              for x in (f"--{k}", v))]
        env = {**os.environ, "TRITON_CACHE_DIR": cache}
        if "perftune_cache" in extra:
            env["PERFTUNE_CACHE_DIR"] = extra["perftune_cache"]
        subprocess.run(command, env=env, check=True)
        return dict(json.loads(Path(result.name).read_text()))


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=12, help="new keys per kernel (>= 10)")
    parser.add_argument("--budget", type=int, default=8)
    parser.add_argument("--kernels", default=",".join(KERNELS))
    parser.add_argument("--out", type=Path, help="result file (default: "
                        "benchmarks/results/autotune_vs_triton.json)")
    parser.add_argument("--worker", choices=("triton", "perftune", "retime"), default=None,
                        help=argparse.SUPPRESS)
    parser.add_argument("--kernel", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--picks", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.mode = args.worker
        Path(args.result).write_text(json.dumps(worker(args)))
        return
    import torch

    if not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("benchmarks.autotune_vs_triton needs a CUDA GPU (none is visible): it "
                         "compares wall times and kernel runtimes on the device")
    if args.keys < 10:
        raise SystemExit("--keys must be at least 10")
    kernels = [k.strip() for k in args.kernels.split(",") if k.strip()]
    out = args.out or RESULTS / "autotune_vs_triton.json"
    report: dict[str, Any] = {}
    failed: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="perftune-bench-") as work:
        db, model = Path(work) / "store.duckdb", Path(work) / "gemm_runtime.skops"
        _prepare(db, model)
        for name in kernels:  # written after each kernel: a run cut short keeps what it did
            try:
                report[name] = _one_kernel(name, args, db, model)
            except subprocess.CalledProcessError as error:  # the others still run
                failed[name] = str(error)
                print(f"{name}: {error}", file=sys.stderr)
            done = list(report.values()) or [{"first_call_ratio": math.nan,
                                              "speed_ratio": math.nan,
                                              "second_process_s": math.nan,
                                              "second_process_cold_cache_s": math.nan}]
            summary = {
                "benchmark": "autotune_vs_triton",
                "measured_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "device": torch.cuda.get_device_name(),
                "command": "python -m benchmarks.autotune_vs_triton " + " ".join(_argv_sans_out()),
                "software": {"torch": torch.__version__, "triton": _triton_version()},
                "cpu_cores": len(os.sched_getaffinity(0)),
                # whether this Python caches bytecode, as a pip-installed environment does
                # (without, every import in every process compiles its modules again)
                "bytecode_cached": not sys.dont_write_bytecode,
                "budget": args.budget,
                "finalists": 3,
                "tie_margin": 0.05,
                "compile_patience": 3.0,
                "kernels_requested": kernels,
                "kernels": report,
                "failed": failed,
                "keys": {k: len(r["curve"]) for k, r in report.items()},
                "first_call_ratio": geomean([r["first_call_ratio"] for r in done]),
                "speed_ratio": geomean([r["speed_ratio"] for r in done]),
                "second_process_s": max(r["second_process_s"] for r in done),
                "second_process_cold_cache_s": max(r["second_process_cold_cache_s"]
                                                   for r in done),
            }
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(summary, indent=2) + "\n")
    for name, r in report.items():
        print(f"{name:8s} first_call_ratio {r['first_call_ratio']:.3f}  speed_ratio "
              f"{r['speed_ratio']:.3f}  second_process_s {r['second_process_s']:.2f}  "
              f"curve {r['curve']}")
    print(f"geomean  first_call_ratio {summary['first_call_ratio']:.3f}  speed_ratio "
          f"{summary['speed_ratio']:.3f}  second_process_s {summary['second_process_s']:.2f}"
          f"; wrote {out}")


def _argv_sans_out() -> list[str]:
    """The command line without ``--out`` (where the file went is no part of reproducing it)."""
    argv, kept = sys.argv[1:], []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a == "--out":
            skip = True
        elif not a.startswith("--out="):
            kept.append(a)
    return kept


def _triton_version() -> str:
    import triton

    return str(triton.__version__)


def _prepare(db: Path, model: Path) -> None:
    """A store from the shipped dataset (the GEMM model's devices and configs) and a GEMM model
    trained on it."""
    from perftune.model.runtime import fit_model, save_model
    from perftune.store.dataset import build_store
    from perftune.store.db import Store

    build_store(db)
    with Store(db, read_only=True) as store:
        save_model(model, *fit_model(store))


def _one_kernel(name: str, args: argparse.Namespace, db: Path, model: Path) -> dict[str, Any]:
    triton_run = _spawn("triton", name, args)
    with tempfile.TemporaryDirectory(prefix="triton-cache-") as cache, \
            tempfile.TemporaryDirectory(prefix="perftune-cache-") as ours_cache:
        # perftune's own cache (the remembered Triton hash) starts empty, as a new user's
        mine = {"db": str(db), "model": str(model), "perftune_cache": ours_cache}
        ours = _spawn("perftune", name, args, cache=cache, **mine)
        # a user's next process: the same store and the same on-disk Triton cache
        second = _spawn("perftune", name, args, cache=cache, **mine)
        cold = _spawn("perftune", name, args, **mine)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as picks:
        json.dump({"triton": triton_run["calls"], "perftune": ours["calls"]}, picks)
    try:
        timed = _spawn("retime", name, args, picks=picks.name)["runtimes_ms"]
    finally:
        os.unlink(picks.name)
    theirs_s = sum(c["first_call_s"] for c in triton_run["calls"])
    ours_s = sum(c["first_call_s"] for c in ours["calls"])
    return {
        "first_call_ratio": ours_s / theirs_s,
        "speed_ratio": geomean([t["triton"] / t["perftune"] for t in timed]),
        "second_process_s": max(c["first_call_s"] for c in second["calls"]),
        "second_process_measured": sum(c["measured"] for c in second["calls"]),
        "second_process_cold_cache_s": max(c["first_call_s"] for c in cold["calls"]),
        "second_process_cold_cache_measured": sum(c["measured"] for c in cold["calls"]),
        "triton_first_calls_s": theirs_s, "perftune_first_calls_s": ours_s,
        "curve": [c["measured"] for c in ours["calls"]],
        "timed_in_full": [c["timed_in_full"] for c in ours["calls"]],
        "left_out": [c["left_out"] for c in ours["calls"]],
        "configs": len(kernel_spec(name)["configs"]),
        "max_rel_error": max(c["rel_error"] for c in ours["calls"] + triton_run["calls"]),
        "per_key": [{"size": t["size"], "triton_ms": r["triton"], "perftune_ms": r["perftune"],
                     "triton_first_call_s": t["first_call_s"],
                     "perftune_first_call_s": o["first_call_s"], "measured": o["measured"],
                     "timed_in_full": o["timed_in_full"], "left_out": o["left_out"],
                     "perftune_phases_s": o["phases"],
                     "triton_config": t["config"], "perftune_config": o["config"]}
                    for t, o, r in zip(triton_run["calls"], ours["calls"], timed, strict=True)],
    }


if __name__ == "__main__":
    main()
