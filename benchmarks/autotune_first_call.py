"""A stored key's first call in a new process: how much is perftune's lookup and how much is
Triton's own first launch.

    python -m benchmarks.autotune_first_call [--kernel softmax]

With one on-disk Triton cache shared by three fresh processes (as a user's next process
shares the last one's):

1. perftune's ``autotune`` tunes the kernel (benchmarks/autotune_vs_triton.py's) on its first
   key into a fresh store, compiling its configs into the cache;
2. the chosen config is launched as a plain ``@triton.jit`` call, no autotuner: Triton's own
   first launch in a process (``triton_first_launch_s``: finding the compiled kernel in its
   cache, hashing its own installation for the cache key, loading the module);
3. perftune's ``autotune`` on the same store and key: a lookup (``perftune_first_call_s``),
   profiled: ``perftune_store_read_s`` is the time the call spent reading its records (on a
   GPU the decorator starts reading them in the background when it decorates: what the call
   still waits for), and
   ``perftune_profile_top`` the calls that took longest (cumulative seconds). perftune's own
   cache (the remembered Triton installation hash) is the one the first process filled.

``perftune_overhead_s`` = ``perftune_first_call_s`` - ``triton_first_launch_s``. Writes
benchmarks/results/autotune_first_call.json (or ``--out``). GPU only.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.autotune_vs_triton import kernel_spec

RESULTS = Path(__file__).resolve().parent / "results"


def _first_call(kernel: str, db: str, mode: str) -> dict[str, Any]:
    """One step above, in this (fresh) process."""
    import torch

    spec = kernel_spec(kernel)
    call_args, meta, grid, _ = spec["call"](spec["sizes"][0])
    if mode == "plain":
        chosen = json.loads(Path(db).with_suffix(".choice.json").read_text())
        torch.cuda.synchronize()
        started = time.perf_counter()
        spec["fn"][grid](*call_args, **meta, **chosen)
        torch.cuda.synchronize()
        return {"wall_s": time.perf_counter() - started}
    from perftune.tune.autotune import autotune

    tuned = autotune(spec["configs"], key=spec["key"], family=spec["family"], db=db,
                     name=f"first_call_{kernel}")(spec["fn"])
    profile = cProfile.Profile() if mode == "lookup" else None
    torch.cuda.synchronize()
    started = time.perf_counter()
    if profile:
        profile.enable()
    tuned[grid](*call_args, **meta)
    torch.cuda.synchronize()
    wall = time.perf_counter() - started
    if profile is None:
        best = tuned.best_config
        Path(db).with_suffix(".choice.json").write_text(json.dumps(
            {**best.kwargs, "num_warps": best.num_warps, "num_stages": best.num_stages}))
        return {"wall_s": wall, "measured": tuned.history[-1]["measured"]}
    profile.disable()
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    read = max((v[3] for (path, _, name), v in stats.items()
                if name == "load" and path.endswith("_autotune_store.py")), default=0.0)
    slowest = sorted(stats.items(), key=lambda item: -item[1][3])[:25]
    return {"wall_s": wall, "measured": tuned.history[-1]["measured"], "store_read_s": read,
            "profile_top": [[f"{Path(path).name}:{line}({name})", round(v[3], 4)]
                            for (path, line, name), v in slowest]}


def _spawn(kernel: str, db: str, cache: str, mode: str) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json") as result:
        subprocess.run([sys.executable, "-m", "benchmarks.autotune_first_call", "--worker",
                        mode, "--kernel", kernel, "--db", db, "--result", result.name],
                       env={**os.environ, "TRITON_CACHE_DIR": cache,
                            "PERFTUNE_CACHE_DIR": str(Path(cache).parent / "perftune-cache")},
                       check=True)
        return dict(json.loads(Path(result.name).read_text()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", default="softmax", help="gemm, rmsnorm or softmax")
    parser.add_argument("--out", type=Path, help="result file (default: "
                        "benchmarks/results/autotune_first_call.json)")
    parser.add_argument("--worker", choices=("tune", "plain", "lookup"), help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        Path(args.result).write_text(json.dumps(_first_call(args.kernel, args.db, args.worker)))
        return
    import torch

    if not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("benchmarks.autotune_first_call needs a CUDA GPU (none is visible)")
    with tempfile.TemporaryDirectory(prefix="first-call-") as work:
        db, cache = str(Path(work) / "store.duckdb"), str(Path(work) / "triton-cache")
        tuned = _spawn(args.kernel, db, cache, "tune")
        plain = _spawn(args.kernel, db, cache, "plain")
        lookup = _spawn(args.kernel, db, cache, "lookup")
    result = {
        "benchmark": "autotune_first_call", "device": torch.cuda.get_device_name(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"),
        "command": f"python -m benchmarks.autotune_first_call --kernel {args.kernel}",
        "software": {"torch": torch.__version__, "triton": _triton_version()},
        "kernel": args.kernel, "tune_first_call_s": tuned["wall_s"],
        "tune_measured": tuned["measured"], "lookup_measured": lookup["measured"],
        "triton_first_launch_s": plain["wall_s"], "perftune_first_call_s": lookup["wall_s"],
        "perftune_store_read_s": lookup["store_read_s"],
        "perftune_overhead_s": lookup["wall_s"] - plain["wall_s"],
        "perftune_profile_top": lookup["profile_top"]}
    out = args.out or RESULTS / "autotune_first_call.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _triton_version() -> str:
    import triton

    return str(triton.__version__)


if __name__ == "__main__":
    main()
