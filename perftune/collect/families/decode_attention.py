"""Decode attention: one query token per sequence against a KV cache (FlashDecoding-style).

``out[b, h] = softmax(q[b, h] . K[b, h // G]^T / sqrt(head_dim)) @ V[b, h // G]`` with q and
out [batch, heads, head_dim], K and V [batch, kv_heads, context, head_dim] and G = heads /
kv_heads query heads sharing a kv head (grouped-query attention; G = 1 is multi-head).

Dataflows: ``sdpa`` (torch.nn.functional.scaled_dot_product_attention with ``enable_gqa``: the
library baseline; no parameters) and ``triton_splitkv`` (the context split over NUM_SPLITS
programs per kv head, each looping over its KV range in BLOCK_N blocks with an online softmax
and writing a partial output and log-sum-exp to an fp32 workspace, then a second kernel
combining the splits; with NUM_SPLITS = 1 the first kernel writes the output itself).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from perftune.collect.families._base import (
    Config,
    Cost,
    DeviceLimits,
    Inputs,
    KernelFamily,
    generator_for,
    random_tensor,
    torch_dtype,
)
from perftune.collect.problems import Problem

if TYPE_CHECKING:
    import torch

SPLITKV_SPACE: dict[str, tuple[int, ...]] = {
    "BLOCK_N": (16, 32, 64, 128),
    "NUM_SPLITS": (1, 2, 4, 8, 16, 32),
    "num_warps": (1, 2, 4, 8),
    "num_stages": (1, 2, 3),
}
HEAD_DIMS = (64, 128)
_MAX_SPLITS = max(SPLITKV_SPACE["NUM_SPLITS"])


def _group_pad(group: int) -> int:
    return max(16, 1 << (group - 1).bit_length())


class DecodeAttentionFamily(KernelFamily):
    name = "decode_attention"
    dims = ("batch", "heads", "kv_heads", "context", "head_dim")
    dataflows: ClassVar[tuple[str, ...]] = ("sdpa", "triton_splitkv")
    compile_modules = ("perftune.collect.families._decode_attention_kernels",)
    dtypes: ClassVar[tuple[str, ...]] = ("fp16", "bf16")
    library_dataflow: ClassVar[str | None] = "sdpa"  # the baseline a tuned config must beat
    # Llama-3-8B-like heads: one long sequence, a batch of medium ones; tiny ones on CPU.
    gpu_defaults = ("batch=1,heads=32,kv_heads=8,context=32768,head_dim=128",
                    "batch=16,heads=32,kv_heads=8,context=4096,head_dim=128",
                    "batch=64,heads=32,kv_heads=8,context=1024,head_dim=128")
    cpu_defaults = ("batch=1,heads=4,kv_heads=2,context=96,head_dim=64",)

    def space(self, dataflow: str) -> dict[str, tuple[int, ...]]:
        self.check_dataflow(dataflow)
        return SPLITKV_SPACE if dataflow == "triton_splitkv" else {}

    @staticmethod
    def _check(problem: Problem) -> None:
        from perftune.errors import PerftuneInputError

        heads, kv_heads = problem["heads"], problem["kv_heads"]
        if kv_heads > heads or heads % kv_heads:
            raise PerftuneInputError(f"problem {problem}: kv_heads ({kv_heads}) must divide "
                                     f"heads ({heads})")
        if problem["head_dim"] not in HEAD_DIMS:
            raise PerftuneInputError(f"problem {problem}: head_dim must be one of "
                                     f"{', '.join(map(str, HEAD_DIMS))}")

    def cost(self, problem: Problem) -> Cost:
        b, h, kvh = problem["batch"], problem["heads"], problem["kv_heads"]
        ctx, d = problem["context"], problem["head_dim"]
        return Cost(flops=4.0 * b * h * ctx * d,
                    bytes=float((2 * b * kvh * ctx * d + 2 * b * h * d) * problem.element_bytes))

    def cost_arrays(self, sizes: dict[str, np.ndarray], element_bytes: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`cost` over arrays of sizes (FLOPs, bytes)."""
        b, h, kvh = (np.asarray(sizes[d], dtype=float) for d in ("batch", "heads", "kv_heads"))
        ctx, d = np.asarray(sizes["context"], dtype=float), np.asarray(sizes["head_dim"], float)
        return 4.0 * b * h * ctx * d, (2 * b * kvh * ctx * d + 2 * b * h * d) * element_bytes

    def programs(self, columns: Any) -> np.ndarray:
        """Programs of the main launch per row: batch x kv_heads x NUM_SPLITS for split-KV;
        batch x heads for SDPA (NUM_SPLITS is NaN on its rows)."""
        batch = np.asarray(columns["batch"], dtype=float)
        kv_heads = np.asarray(columns["kv_heads"], dtype=float)
        splits = (np.asarray(columns["NUM_SPLITS"], dtype=float) if "NUM_SPLITS" in columns
                  else np.full(len(batch), np.nan))
        return np.where(np.isnan(splits), batch * np.asarray(columns["heads"], dtype=float),
                        batch * kv_heads * splits)

    def extra_feature_names(self) -> tuple[str, ...]:
        return ("log_group", "group_fill", "log_kv_per_program", "log_block_iters",
                "log_program_bytes", "log_reduce_bytes", "launches", "smem_bytes",
                "programs_per_sm")

    def extra_features(self, columns: Any, base: dict[str, np.ndarray]
                       ) -> dict[str, np.ndarray]:
        """The shape of the work per program: query heads sharing a KV head (padded to the
        dot's 16-row minimum), the KV span each program streams, its block iterations, the
        split reduction's traffic, and shared memory (which bounds programs per SM)."""
        heads, kv_heads = (np.asarray(columns[c], dtype=float) for c in ("heads", "kv_heads"))
        context, d = (np.asarray(columns[c], dtype=float) for c in ("context", "head_dim"))
        batch, eb = np.asarray(columns["batch"], dtype=float), base["element_bytes"]
        tuned = base["is_triton_splitkv"] > 0
        splits = np.where(tuned, np.maximum(base["NUM_SPLITS"], 1.0), 1.0)
        block_n = np.where(tuned, np.maximum(base["BLOCK_N"], 1.0), 64.0)
        stages = np.where(tuned, np.maximum(base["num_stages"], 1.0), 2.0)
        group = heads / kv_heads
        pad = np.maximum(16.0, 2.0 ** np.ceil(np.log2(group)))
        kv_span = np.ceil(context / splits)
        smem = (stages * 2 * block_n * d + pad * d + pad * block_n) * eb
        reduce = np.where(splits > 1, 2 * 4 * batch * heads * splits * (d + 1), 1.0)
        return {"log_group": np.log2(group), "group_fill": group / pad,
                "log_kv_per_program": np.log2(kv_span),
                "log_block_iters": np.log2(np.ceil(kv_span / block_n)),
                "log_program_bytes": np.log2(2 * kv_span * d * eb),
                "log_reduce_bytes": np.log2(reduce), "launches": 1.0 + (splits > 1),
                "smem_bytes": smem,
                "programs_per_sm": 2.0 ** base["log_programs"] / base["sm_count"]}

    def memory_needed(self, problem: Problem) -> tuple[float, int]:
        self._check(problem)  # the collector asks this first: bad sizes fail before a sweep
        b, h, kvh = problem["batch"], problem["heads"], problem["kv_heads"]
        ctx, d = problem["context"], problem["head_dim"]
        operands = self.cost(problem).bytes
        workspace = 4 * b * h * _MAX_SPLITS * (d + 1)
        reference = 8 * (2 * kvh * ctx * d + 2 * h * d)  # float64 copies of one sequence
        return float(operands + workspace + reference + 4 * b * h * d), b * kvh * ctx * d

    def specialization(self, problem: Problem) -> tuple[object, ...]:
        """The kernels compile per head_dim and query-tile rows (the group size padded to 16
        or a power of two); context and group size are not specialized, and batch and head
        counts are grid sizes."""
        return problem["head_dim"], _group_pad(problem["heads"] // problem["kv_heads"])

    def is_valid(self, problem: Problem, dataflow: str, config: Config,
                 limits: DeviceLimits) -> bool:
        if not config:
            return True
        block_n, splits = config["BLOCK_N"], config["NUM_SPLITS"]
        if problem["context"] < splits * block_n:
            return False  # a split would get no KV (or a part of one block)
        d, group = problem["head_dim"], problem["heads"] // problem["kv_heads"]
        pad = _group_pad(group)
        # K and V blocks per pipeline stage, the query tile, and the probabilities passed
        # through shared memory to the second dot.
        stages = max(1, config["num_stages"])
        shared = (stages * 2 * block_n * d + pad * d + pad * block_n) * problem.element_bytes
        return shared <= limits.shared_memory_per_block

    def make_inputs(self, problem: Problem, device: str, seed: int) -> Inputs:
        import torch

        self._check(problem)
        b, h, kvh = problem["batch"], problem["heads"], problem["kv_heads"]
        ctx, d = problem["context"], problem["head_dim"]
        gen = generator_for(device, seed)
        return {
            "q": random_tensor((b, h, d), problem.dtype, device, gen),
            "k": random_tensor((b, kvh, ctx, d), problem.dtype, device, gen),
            "v": random_tensor((b, kvh, ctx, d), problem.dtype, device, gen),
            "out": torch.empty((b, h, d), dtype=torch_dtype(problem.dtype), device=device),
            "workspace": None,
        }

    def _workspace(self, problem: Problem, config: Config, inputs: Inputs) -> torch.Tensor:
        import torch

        from perftune.collect.families import _decode_attention_kernels as kernels

        need = max(1, kernels.workspace_elements(problem["batch"], problem["heads"],
                                                 problem["head_dim"], config["NUM_SPLITS"]))
        current = inputs.get("workspace")
        if current is None or current.numel() < need:
            current = torch.empty(need, dtype=torch.float32, device=inputs["q"].device)
            inputs["workspace"] = current
        return current

    def launcher(self, problem: Problem, dataflow: str, config: Config,
                 inputs: Inputs) -> Callable[[], None]:
        import torch

        self.check_dataflow(dataflow)
        self._check(problem)
        q, k, v, out = inputs["q"], inputs["k"], inputs["v"], inputs["out"]
        scale = 1.0 / math.sqrt(problem["head_dim"])
        if dataflow == "sdpa":
            gqa = problem["heads"] != problem["kv_heads"]
            q4 = q.unsqueeze(2)  # [batch, heads, 1, head_dim]

            def library() -> None:
                result = torch.nn.functional.scaled_dot_product_attention(
                    q4, k, v, scale=scale, enable_gqa=gqa)
                out.copy_(result.squeeze(2))

            return library

        from perftune.collect.families import _decode_attention_kernels as kernels

        workspace = self._workspace(problem, config, inputs)
        sizes = (problem["batch"], problem["heads"], problem["kv_heads"], problem["context"],
                 problem["head_dim"])

        def run() -> None:
            kernels.decode_attention(q, k, v, out, workspace, *sizes, scale,
                                     **config)  # type: ignore[arg-type]

        return run

    def compile(self, problem: Problem, dataflow: str, config: Config, device: str) -> None:
        if dataflow == "sdpa":
            return
        import torch

        from perftune.collect.families import _decode_attention_kernels as kernels

        placeholder = torch.empty(64, dtype=torch_dtype(problem.dtype), device=device)
        workspace = torch.empty(64, dtype=torch.float32, device=device)
        kernels.decode_attention(placeholder, placeholder, placeholder, placeholder, workspace,
                                 problem["batch"], problem["heads"], problem["kv_heads"],
                                 problem["context"], problem["head_dim"],
                                 1.0 / math.sqrt(problem["head_dim"]), **config, warmup=True)

    def reference(self, problem: Problem, inputs: Inputs) -> torch.Tensor:
        """float64 attention, one sequence at a time (a float64 copy of the whole cache
        would be four times its size)."""
        import torch

        q, k, v = inputs["q"], inputs["k"], inputs["v"]
        b, h, kvh = problem["batch"], problem["heads"], problem["kv_heads"]
        d = problem["head_dim"]
        group = h // kvh
        scale = 1.0 / math.sqrt(d)
        out = torch.empty((b, h, d), dtype=torch.float32, device=q.device)
        for i in range(b):
            qi = q[i].double().view(kvh, group, d)
            ki, vi = k[i].double(), v[i].double()
            scores = torch.matmul(qi, ki.transpose(1, 2)) * scale  # [kvh, group, context]
            weights = torch.softmax(scores, dim=-1)
            out[i] = torch.matmul(weights, vi).reshape(h, d).float()
        return out
