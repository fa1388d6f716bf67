"""Triton split-KV decode attention (imported lazily: importing this module imports triton).

Set ``TRITON_INTERPRET=1`` before importing to run the kernels on CPU tensors.

Layout (contiguous): q and out [batch, heads, HEAD_DIM], k and v [batch, kv_heads, context,
HEAD_DIM]; query head ``h`` reads kv head ``h // GROUP`` (GROUP = heads / kv_heads), as
``scaled_dot_product_attention(..., enable_gqa=True)`` does.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit(do_not_specialize=["context", "group"])
def splitkv_kernel(q_ptr, k_ptr, v_ptr, out_ptr, o_ws_ptr, lse_ws_ptr, context, group, qk_scale,
                   HEAD_DIM: tl.constexpr, GROUP_PAD: tl.constexpr,
                   BLOCK_N: tl.constexpr, NUM_SPLITS: tl.constexpr, DOT_F32: tl.constexpr):
    """One program per (batch x kv head, split): the ``group`` query heads that share a kv
    head (a GROUP_PAD-row tile for tl.dot) attend over the split's KV blocks with an online
    softmax (base 2; ``qk_scale`` includes log2(e)). K and V are read once per group.

    ``context`` and ``group`` are not specialized (a binary serves every context and group
    size up to GROUP_PAD): KV rows are HEAD_DIM-aligned whatever the context.

    NUM_SPLITS == 1 writes the normalised output directly; otherwise the split's normalised
    partial output goes to the fp32 workspace o_ws [batch, heads, NUM_SPLITS, HEAD_DIM] and
    its log2-sum-exp to lse_ws [batch, heads, NUM_SPLITS], for ``combine_kernel``.
    """
    bh = tl.program_id(0).to(tl.int64)  # batch * kv_heads + kv head
    split = tl.program_id(1)
    # Blocks are dealt out evenly: every split gets one or more when cdiv(context, BLOCK_N)
    # >= NUM_SPLITS (the family's constraint); an empty split still writes lse = -inf.
    n_blocks = tl.cdiv(context, BLOCK_N)
    first = (split * n_blocks) // NUM_SPLITS
    last = ((split + 1) * n_blocks) // NUM_SPLITS
    start = first * BLOCK_N
    end = tl.minimum(last * BLOCK_N, context)

    rows = tl.arange(0, GROUP_PAD)
    dims = tl.arange(0, HEAD_DIM)
    cols = tl.arange(0, BLOCK_N)
    row_ok = rows < group
    q_ptrs = q_ptr + (bh * group + rows)[:, None] * HEAD_DIM + dims[None, :]
    q = tl.load(q_ptrs, mask=row_ok[:, None], other=0.0)
    if DOT_F32:
        q = q.to(tl.float32)
    kv_base = bh * context * HEAD_DIM
    k_ptrs = k_ptr + kv_base + cols[None, :] * HEAD_DIM + dims[:, None]  # K^T: [HEAD_DIM, BLOCK_N]
    v_ptrs = v_ptr + kv_base + cols[:, None] * HEAD_DIM + dims[None, :]  # V: [BLOCK_N, HEAD_DIM]

    m_i = tl.full((GROUP_PAD,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((GROUP_PAD,), dtype=tl.float32)
    acc = tl.zeros((GROUP_PAD, HEAD_DIM), dtype=tl.float32)
    for n in range(start, end, BLOCK_N):
        col_ok = (n + cols) < end
        k = tl.load(k_ptrs + n * HEAD_DIM, mask=col_ok[None, :], other=0.0)
        v = tl.load(v_ptrs + n * HEAD_DIM, mask=col_ok[:, None], other=0.0)
        if DOT_F32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
        s = tl.dot(q, k) * qk_scale
        s = tl.where(col_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))  # finite: every block has a valid column
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new

    heads = bh * group + rows  # this group's rows of [batch * heads]
    if NUM_SPLITS == 1:
        out = acc / l_i[:, None]
        tl.store(out_ptr + heads[:, None] * HEAD_DIM + dims[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])
    else:
        safe_l = tl.where(l_i > 0, l_i, 1.0)
        lse = tl.where(l_i > 0, m_i + tl.log2(safe_l), float("-inf"))
        slot = heads * NUM_SPLITS + split
        tl.store(o_ws_ptr + slot[:, None] * HEAD_DIM + dims[None, :], acc / safe_l[:, None],
                 mask=row_ok[:, None])
        tl.store(lse_ws_ptr + slot, lse, mask=row_ok)


@triton.jit
def combine_kernel(o_ws_ptr, lse_ws_ptr, out_ptr, HEAD_DIM: tl.constexpr,
                   NUM_SPLITS: tl.constexpr):
    """out[row] = sum_s w_s o_s / sum_s w_s with w_s = 2^(lse_s - max lse): one program per
    (batch, head) row."""
    row = tl.program_id(0).to(tl.int64)
    splits = tl.arange(0, NUM_SPLITS)
    dims = tl.arange(0, HEAD_DIM)
    lse = tl.load(lse_ws_ptr + row * NUM_SPLITS + splits)
    top = tl.max(lse, axis=0)
    w = tl.where(lse > float("-inf"), tl.exp2(lse - top), 0.0)
    o = tl.load(o_ws_ptr + (row * NUM_SPLITS + splits)[:, None] * HEAD_DIM + dims[None, :])
    out = tl.sum(o * w[:, None], axis=0) / tl.sum(w, axis=0)
    tl.store(out_ptr + row * HEAD_DIM + dims, out.to(out_ptr.dtype.element_ty))


# Triton's interpreter computes tl.dot wrongly on bf16 operands (as in _gemm_kernels); on CPU
# only, the kernel upcasts them to fp32 first. Compiled GPU kernels never take this path.
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def group_pad(group: int) -> int:
    """Rows of the query tile: the group size, padded to a power of two and to tl.dot's 16."""
    return max(16, triton.next_power_of_2(group))


def workspace_elements(batch: int, heads: int, head_dim: int, num_splits: int) -> int:
    """fp32 elements of the partial outputs plus their log-sum-exps (0 with one split)."""
    return 0 if num_splits == 1 else batch * heads * num_splits * (head_dim + 1)


def decode_attention(q, k, v, out, workspace, batch: int, heads: int, kv_heads: int,
                     context: int, head_dim: int, scale: float, *, BLOCK_N: int,
                     NUM_SPLITS: int, num_warps: int, num_stages: int,
                     warmup: bool = False) -> None:
    """Launch (or with ``warmup`` only compile) one config. With ``warmup`` the tensors may be
    small placeholders: compilation depends on the sizes passed, not on the data."""
    group = heads // kv_heads
    o_ws = lse_ws = out  # unused with one split
    if NUM_SPLITS > 1:
        o_elems = batch * heads * NUM_SPLITS * head_dim
        o_ws = workspace if warmup else workspace[:o_elems]
        lse_ws = workspace if warmup else workspace[o_elems:]
    grid = (batch * kv_heads, NUM_SPLITS)
    args = (q, k, v, out, o_ws, lse_ws, context, group, scale * LOG2E)
    meta = dict(HEAD_DIM=head_dim, GROUP_PAD=group_pad(group), BLOCK_N=BLOCK_N,
                NUM_SPLITS=NUM_SPLITS, DOT_F32=_INTERPRETED and q.dtype == torch.bfloat16,
                num_warps=num_warps, num_stages=num_stages)
    combine_meta = dict(HEAD_DIM=head_dim, NUM_SPLITS=NUM_SPLITS, num_warps=4)
    if warmup:
        splitkv_kernel.warmup(*args, grid=grid, **meta)
        if NUM_SPLITS > 1:
            combine_kernel.warmup(o_ws, lse_ws, out, grid=(1,), **combine_meta)
        return
    splitkv_kernel[grid](*args, **meta)
    if NUM_SPLITS > 1:
        combine_kernel[(batch * heads,)](o_ws, lse_ws, out, **combine_meta)
