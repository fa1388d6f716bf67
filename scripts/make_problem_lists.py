"""Write the GEMM problem lists of the shipped dataset under perftune/data/problems/.

Linear layers of several LLM families (y = x W^T: M tokens, N output features, K input
features), decode to prefill, plus random sizes that are not multiples of 16 or 64.
Deterministic: re-running rewrites the same files.

    python -m scripts.make_problem_lists
"""

from __future__ import annotations

import csv
import random

from perftune.settings import PROBLEMS_DIR as OUT

# name: (hidden, intermediate, kv width)
MODELS = {
    "llama2-7b": (4096, 11008, 4096),
    "llama3-8b": (4096, 14336, 1024),
    "llama3-70b": (8192, 28672, 1024),
    "qwen2-7b": (3584, 18944, 512),
    "phi3-mini": (3072, 8192, 3072),
    "llama2-13b": (5120, 13824, 5120),
}


def layers(hidden: int, inter: int, kv: int) -> dict[str, tuple[int, int]]:
    """(N, K) of each linear layer."""
    return {"q_o": (hidden, hidden), "kv": (kv, hidden), "qkv": (hidden + 2 * kv, hidden),
            "gate_up": (2 * inter, hidden), "up": (inter, hidden), "down": (hidden, inter)}


def llm_problems() -> list[dict[str, object]]:
    rng = random.Random(4)
    ms = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
    rows: list[dict[str, object]] = []
    seen = set()
    for model, dims in MODELS.items():
        for layer, (n, k) in layers(*dims).items():
            for m in rng.sample(ms, 3):
                if (m, n, k) in seen or m * n * k > 16384 * 14336 * 4096:
                    continue
                seen.add((m, n, k))
                rows.append({"m": m, "n": n, "k": k, "source": f"{model}:{layer}"})
    return rows


def random_problems(count: int, seed: int = 25) -> list[dict[str, object]]:
    rng = random.Random(seed)
    rows = []
    while len(rows) < count:
        m, n, k = (int(2 ** rng.uniform(0, 13)) for _ in range(3))
        n, k = max(n, 24), max(k, 24)
        if any(v % 16 == 0 for v in (m, n, k) if v > 16):
            continue
        rows.append({"m": m, "n": n, "k": k, "source": "random"})
    return rows


def whole_space(rows: list[dict[str, object]], count: int) -> list[dict[str, object]]:
    """A spread of moderate problems (decode, mid, prefill) whose whole space is swept."""
    rng = random.Random(30)
    moderate = [r for r in rows if _volume(r) <= 4096**3]
    return sorted(rng.sample(moderate, count), key=lambda r: (r["source"] == "random", r["m"]))


def rmsnorm_problems() -> list[dict[str, object]]:
    """Rows (tokens) x hidden sizes of the models above, plus odd sizes: 40 problems."""
    rng = random.Random(40)
    hidden = sorted({h for h, _, _ in MODELS.values()})
    rows: list[dict[str, object]] = [
        {"m": m, "n": n, "dtype": rng.choice(["fp16", "bf16"]), "source": "llm"}
        for m in (1, 16, 256, 2048, 8192) for n in hidden]
    while len(rows) < 40:
        m, n = int(2 ** rng.uniform(0, 14)), int(2 ** rng.uniform(7, 14.5))
        rows.append({"m": m, "n": n, "dtype": rng.choice(["fp16", "bf16"]), "source": "random"})
    return rows


def write(name: str, rows: list[dict[str, object]], header: str) -> None:
    path = OUT / name
    fields = [f for f in ("family", "m", "n", "k", "dtype", "source") if f in rows[0]]
    with path.open("w", newline="") as handle:
        handle.write(f"# {header}\n# written by scripts/make_problem_lists.py\n")
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    print(f"{path}: {len(rows)} problems")


def main() -> None:
    llm, rand = llm_problems(), random_problems(30)
    rng = random.Random(16)
    everything = [dict(r, dtype=rng.choice(["fp16", "bf16"])) for r in llm + rand]
    whole = whole_space(everything, 30)
    whole_keys = {_key(r) for r in whole}
    sampled = [r for r in everything if _key(r) not in whole_keys]
    write("gemm_sampled.csv", sampled, "GEMM problems swept over a seeded sample of the space")
    write("gemm_whole.csv", whole, "GEMM problems swept over the whole config space")
    # H200: a subset of the H100 problems, half of them from the whole-space list.
    rng = random.Random(200)
    h200 = rng.sample(whole, 20) + rng.sample(sampled, 20)
    write("gemm_h200.csv", h200, "H200 GEMM problems (a subset of the H100 ones)")
    write("gemm_h200_whole.csv", [r for r in h200[:20] if int(r["m"]) <= 64][:8],  # type: ignore[call-overload]
          "H200 GEMM problems swept over the whole config space")
    rmsnorm = rmsnorm_problems()
    write("rmsnorm_whole.csv", rmsnorm, "RMSNorm problems swept over the whole config space")
    # The held-out problems: no model trains on them; every accuracy benchmark reports on them.
    rng = random.Random(404)
    heldout = ([dict(r, family="gemm") for r in rng.sample(whole, 8) + rng.sample(sampled, 16)]
               + [dict(r, family="rmsnorm", k="") for r in rng.sample(rmsnorm, 8)])
    write("heldout.csv", heldout, "Held-out problems (whole problems, not rows): never trained on")
    write("gemm_h200_whole_more.csv", h200_whole_more(whole, heldout, h200),
          "More H200 GEMM problems swept whole: the held-out whole-space ones first")
    write("gemm_whole_large.csv", large_whole_space(sampled, heldout),
          "Large sampled GEMM problems (M >= 512) re-swept over the whole config space")
    write("gemm_whole_narrow.csv", narrow_whole_space(sampled, heldout),
          "Narrow sampled GEMM problems (M <= 128, N <= 1024, K >= 1024) re-swept whole")
    breadth = breadth_problems(everything, heldout)
    write("gemm_breadth.csv", breadth,
          "More training problems, few configs each (cuBLAS and a small sample)")
    random_breadth = breadth_random(everything + breadth, heldout)
    write("gemm_breadth_random.csv", random_breadth,
          "Random-size training problems, few configs each (cuBLAS and a small sample)")
    write("gemm_whole_regimes.csv", regime_whole_space(breadth + random_breadth),
          "Breadth training problems of the least-swept regimes, re-swept whole")


def h200_whole_more(whole: list[dict[str, object]], heldout: list[dict[str, object]],
                    h200: list[dict[str, object]]) -> list[dict[str, object]]:
    """The held-out problems of the whole-space list, then others (M > 64 first) that the H200
    has no whole sweep of, 12 in all: the H200's held-out accuracy measured against its whole
    space, and its compute-bound regimes covered."""
    held = {_key(r) for r in heldout}
    swept = {_key(r) for r in [r for r in h200[:20] if int(str(r["m"])) <= 64][:8]}
    first = [r for r in whole if _key(r) in held and _key(r) not in swept]
    rest = sorted((r for r in whole if _key(r) not in held and _key(r) not in swept),
                  key=lambda r: int(str(r["m"])) <= 64)  # compute-bound ones first
    return first + rest[:12 - len(first)]  # with the 8 swept already: 20


def large_whole_space(sampled: list[dict[str, object]],
                     heldout: list[dict[str, object]]) -> list[dict[str, object]]:
    """Compute-bound training problems for a whole-space sweep: the main whole-space list
    draws M <= 1024 only, and a model learns the best tiles of a large GEMM from these.
    Smallest first (a time-limited sweep finishes the cheap ones), held-out problems left
    out."""
    held = {_key(r) for r in heldout}
    large = [r for r in sampled if int(r["m"]) >= 512  # type: ignore[call-overload]
             and _volume(r) <= 2**38 and _key(r) not in held]
    return sorted(large, key=_volume)


def narrow_whole_space(sampled: list[dict[str, object]],
                       heldout: list[dict[str, object]]) -> list[dict[str, object]]:
    """Narrow training problems with a long K for a whole-space sweep: their output has few
    tiles, fewer CTAs than SMs, so how fast one CTA streams its K (tile shape, stages), not
    the SM count, sets the time; the other whole-space lists hold two such problems. LLM layers
    first (a time-limited sweep finishes them), held-out problems left out."""
    held = {_key(r) for r in heldout}
    narrow = [r for r in sampled if int(r["m"]) <= 128 and int(r["n"]) <= 1024  # type: ignore[call-overload]
              and int(r["k"]) >= 1024 and _key(r) not in held]  # type: ignore[call-overload]
    return sorted(narrow, key=lambda r: (r["source"] == "random", _volume(r)))


def breadth_problems(listed: list[dict[str, object]],
                     heldout: list[dict[str, object]]) -> list[dict[str, object]]:
    """Training problems for breadth: every LLM layer x token count the lists above did not
    draw, plus new random sizes, up to 2**38 multiply-adds. A model ranks dataflows by its
    cuBLAS forest, which has one row per training problem: these give it (and the tiled
    forests) more problems rather than more configs of the same ones. Shapes of held-out
    problems are left out in either dtype; the order is shuffled, so a time-limited sweep
    still covers the range."""
    rng = random.Random(38)
    taken = _shapes(listed + heldout)
    rows: list[dict[str, object]] = []
    ms = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
    for model, dims in MODELS.items():
        for layer, (n, k) in layers(*dims).items():
            rows += _unlisted([{"m": m, "n": n, "k": k, "source": f"{model}:{layer}"}
                               for m in ms], taken)
    rows += _unlisted(random_problems(90, seed=26), taken)
    rows = [dict(r, dtype=rng.choice(["fp16", "bf16"])) for r in rows]
    rng.shuffle(rows)
    return rows


def breadth_random(listed: list[dict[str, object]],
                   heldout: list[dict[str, object]]) -> list[dict[str, object]]:
    """500 more random sizes (not multiples of 16), none of a listed or held-out shape: in
    cross-validation the dataflow picks failed most on such sizes, where cuBLAS's own
    heuristics pick slow kernels."""
    rng = random.Random(27)
    rows = _unlisted(random_problems(560, seed=27), _shapes(listed + heldout))
    return [dict(r, dtype=rng.choice(["fp16", "bf16"])) for r in rows][:500]


def regime_whole_space(breadth: list[dict[str, object]],
                       per_regime: int = 10) -> list[dict[str, object]]:
    """Breadth training problems to re-sweep over the whole space, from the three regimes
    with the smallest whole-space share among the training problems (decode M <= 16, a narrow
    N or K <= 300, 2^30 to 2^35 multiply-adds): the rankings are learned from whole-space
    problems.
    ``per_regime`` each, seeded, the regimes interleaved so that a time-limited sweep stays
    balanced. The breadth lists already exclude held-out shapes."""
    def regime(row: dict[str, object]) -> str:
        m, n, k = (int(row[d]) for d in ("m", "n", "k"))  # type: ignore[call-overload]
        if m <= 16:
            return "decode"
        if min(n, k) <= 300:
            return "narrow"
        return "mid" if 2**30 <= _volume(row) < 2**35 else "other"

    rng = random.Random(39)
    drawn = [rng.sample([r for r in breadth if regime(r) == name], per_regime)
             for name in ("decode", "narrow", "mid")]
    return [row for group in zip(*drawn, strict=True) for row in group]


def _unlisted(candidates: list[dict[str, object]],
              taken: set[tuple[object, ...]]) -> list[dict[str, object]]:
    """The candidates of a new shape up to 2**38 multiply-adds, in order; adds them to
    ``taken``."""
    rows = []
    for row in candidates:
        shape = (row["m"], row["n"], row["k"])
        if shape not in taken and _volume(row) <= 2**38:
            taken.add(shape)
            rows.append(row)
    return rows


def _shapes(rows: list[dict[str, object]]) -> set[tuple[object, ...]]:
    return {(r["m"], r["n"], r["k"]) for r in rows}


def _key(problem: dict[str, object]) -> tuple[object, ...]:
    return problem["m"], problem["n"], problem["k"], problem["dtype"]


def _volume(problem: dict[str, object]) -> int:
    return int(problem["m"]) * int(problem["n"]) * int(problem["k"])  # type: ignore[call-overload]


if __name__ == "__main__":
    main()
