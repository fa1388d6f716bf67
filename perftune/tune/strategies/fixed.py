"""Strategies that measure a fixed list in order: the library alone, the Triton tutorial's
configs, and NVIDIA's nvMatmulHeuristics' ranked kernels mapped to our space."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

from perftune.errors import PerftuneInputError
from perftune.store.keys import canonical_config
from perftune.tune.strategies._base import Strategy

if TYPE_CHECKING:
    from perftune.tune.search import Search

# The Triton matmul tutorial's configs, mapped to the nearest of our space (stages 5 -> 4,
# 2 warps -> 4): (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_stages, num_warps).
TUTORIAL = [(128, 256, 64, 8, 3, 8), (64, 256, 32, 8, 4, 4), (128, 128, 32, 8, 4, 4),
            (128, 64, 32, 8, 4, 4), (64, 128, 32, 8, 4, 4), (128, 32, 32, 8, 4, 4),
            (64, 32, 32, 8, 4, 4), (32, 64, 32, 8, 4, 4)]


class Library(Strategy):
    """The family's library alone (cuBLAS for GEMM, SDPA for decode attention): the baseline
    every search must beat."""

    name = "library"

    def run(self, search: Search) -> None:
        candidates = search.candidates
        search.in_order(candidates[candidates["dataflow"] == search.family.library_dataflow])


class Tutorial(Strategy):
    """The Triton matmul tutorial's 8 configs, in the tutorial's order."""

    name = "tutorial"

    def run(self, search: Search) -> None:
        names = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M", "num_stages", "num_warps")
        wanted = [canonical_config(dict(zip(names, values, strict=True))) for values in TUTORIAL]
        triton = search.candidates[search.candidates["dataflow"] == "triton"]
        present = [c for c in wanted if c in set(triton["config"])]
        if not present:
            raise PerftuneInputError("the Triton matmul tutorial's configs are GEMM configs; "
                                     "none is a candidate of this problem")
        search.in_order(pd.DataFrame({"dataflow": "triton", "config": present}))


class Heuristics(Strategy):
    """nvMatmulHeuristics' ranked kernels, mapped to the nearest candidates: several of its
    kernels can map to one of ours, so it is asked for more than the budget."""

    name = "nvmmh"

    def run(self, search: Search) -> None:
        from perftune.model.features import with_config_columns
        from perftune.model.nvmmh import heuristic_configs, nearest_candidates

        problem = search.problem
        if set(problem.sizes) != {"m", "n", "k"}:
            raise PerftuneInputError("nvMatmulHeuristics answers GEMM problems only")
        choices = heuristic_configs(m=problem.m, n=problem.n, k=problem.k, dtype=problem.dtype,
                                    device=str(problem.device), count=4 * search.budget)
        search.in_order(nearest_candidates(choices, with_config_columns(search.candidates)))
