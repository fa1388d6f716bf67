"""Triton GEMM kernels (imported lazily: importing this module imports triton).

Set ``TRITON_INTERPRET=1`` before importing to run them on CPU tensors.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


@triton.jit
def matmul_kernel(a_ptr, b_ptr, c_ptr, M, N, K,
                  stride_am, stride_ak, stride_bk, stride_bn, stride_cs, stride_cm, stride_cn,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  GROUP_M: tl.constexpr, SPLIT_K: tl.constexpr, DOT_F32: tl.constexpr):
    """C[pid_k] = A[:, ks] @ B[ks, :] over the K slice ``ks`` of this program's split.

    With SPLIT_K == 1, ``c_ptr`` is the output; otherwise an fp32 workspace of SPLIT_K slices
    that ``splitk_reduce_kernel`` sums.
    """
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    num_pid_in_group = GROUP_M * num_pid_n
    group_id = pid // num_pid_in_group
    first_pid_m = group_id * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + ((pid % num_pid_in_group) % group_size_m)
    pid_n = (pid % num_pid_in_group) // group_size_m

    k_per_split = tl.cdiv(K, SPLIT_K * BLOCK_K) * BLOCK_K
    k_start = pid_k * k_per_split
    offs_am = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)) % M
    offs_bn = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % N
    offs_k = k_start + tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + offs_am[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + offs_bn[None, :] * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    k_end = tl.minimum(K, k_start + k_per_split)
    for k in range(0, tl.cdiv(k_per_split, BLOCK_K)):
        k_mask = offs_k < k_end - k * BLOCK_K
        a = tl.load(a_ptrs, mask=k_mask[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_mask[:, None], other=0.0)
        if DOT_F32:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    offs_cm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_cn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    c_ptrs = (c_ptr + pid_k * stride_cs + offs_cm[:, None] * stride_cm
              + offs_cn[None, :] * stride_cn)
    c_mask = (offs_cm[:, None] < M) & (offs_cn[None, :] < N)
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=c_mask)


@triton.jit
def splitk_reduce_kernel(ws_ptr, out_ptr, MN, SPLIT_K: tl.constexpr, BLOCK: tl.constexpr):
    """out = sum over the SPLIT_K fp32 slices of the workspace, cast to out's dtype."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < MN
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in tl.static_range(SPLIT_K):
        acc += tl.load(ws_ptr + s * MN + offs, mask=mask, other=0.0)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


REDUCE_BLOCK = 1024
# Triton's interpreter (3.9) computes tl.dot wrongly on bf16 operands; on CPU only, the kernel
# upcasts them to fp32 first. Compiled GPU kernels never take this path.
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


def matmul(a, b, c, workspace, M: int, N: int, K: int, *, BLOCK_M: int, BLOCK_N: int,
           BLOCK_K: int, GROUP_M: int, SPLIT_K: int, num_warps: int, num_stages: int,
           warmup: bool = False) -> None:
    """Launch (or with ``warmup`` only compile) one config of the tiled GEMM on row-major
    operands. With ``warmup`` the tensors may be small placeholders: compilation depends on
    the sizes (passed explicitly), not on the data."""
    target = c if SPLIT_K == 1 else workspace
    stride_cs = 0 if SPLIT_K == 1 else M * N
    grid = (triton.cdiv(M, BLOCK_M) * triton.cdiv(N, BLOCK_N), SPLIT_K)
    args = (a, b, target, M, N, K, K, 1, N, 1, stride_cs, N, 1)
    meta = dict(BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, GROUP_M=GROUP_M,
                SPLIT_K=SPLIT_K, num_warps=num_warps, num_stages=num_stages,
                DOT_F32=_INTERPRETED and a.dtype == torch.bfloat16)
    if warmup:
        matmul_kernel.warmup(*args, grid=grid, **meta)
        if SPLIT_K > 1:
            splitk_reduce_kernel.warmup(workspace, c, M * N, SPLIT_K=SPLIT_K,
                                        BLOCK=REDUCE_BLOCK, grid=(1,))
        return
    matmul_kernel[grid](*args, **meta)
    if SPLIT_K > 1:
        reduce_grid = (triton.cdiv(M * N, REDUCE_BLOCK),)
        splitk_reduce_kernel[reduce_grid](workspace, c, M * N, SPLIT_K=SPLIT_K,
                                          BLOCK=REDUCE_BLOCK)
