"""Conformance suite that every kernel family passes (on the GPU when there is one, else
under the Triton interpreter)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from perftune.collect.device import select_mode, torch_device
from perftune.collect.families import BUILTIN, DeviceLimits, KernelFamily, load_family
from perftune.collect.problems import Problem
from perftune.errors import PerftuneInputError

MODE = select_mode(None)  # before any kernel module imports triton
DEVICE = torch_device(MODE)
SMALL = {"gemm": Problem.of("fp16", m=20, n=40, k=136),
         "rmsnorm": Problem.of("fp16", m=5, n=300),
         "decode_attention": Problem.of("fp16", batch=2, heads=4, kv_heads=2, context=96,
                                        head_dim=64)}


@pytest.fixture(params=sorted(BUILTIN))
def family(request: pytest.FixtureRequest) -> KernelFamily:
    return load_family(request.param)


def _problem(family: KernelFamily, dtype: str = "fp16") -> Problem:
    return Problem(SMALL[family.name].dims, dtype)


def test_declares_itself(family: KernelFamily) -> None:
    assert family.name and family.dims and family.dataflows
    assert tuple(SMALL[family.name].sizes) == family.dims


def test_spaces_and_constraints(family: KernelFamily) -> None:
    problem = _problem(family)
    for dataflow in family.dataflows:
        space = family.space(dataflow)
        configs = family.configs(problem, dataflow, DeviceLimits())
        assert configs, f"{dataflow}: no valid config for {problem}"
        for config in configs:
            assert set(config) == set(space)
            assert all(config[name] in space[name] for name in space)
    tiny_smem = DeviceLimits(shared_memory_per_block=16 * 1024)
    assert sum(len(family.configs(problem, d, tiny_smem)) for d in family.dataflows) <= sum(
        len(family.configs(problem, d, DeviceLimits())) for d in family.dataflows)


def test_unknown_dataflow_is_refused(family: KernelFamily) -> None:
    with pytest.raises(PerftuneInputError, match="has no dataflow 'warp_drive'"):
        family.space("warp_drive")


def test_cost_and_memory_are_positive(family: KernelFamily) -> None:
    problem = _problem(family)
    cost = family.cost(problem)
    assert cost.flops > 0 and cost.bytes > 0
    needed, largest = family.memory_needed(problem)
    assert needed >= cost.bytes and largest > 0


def test_inputs_are_seeded_and_not_zero(family: KernelFamily) -> None:
    problem = _problem(family)
    first, again = family.make_inputs(problem, DEVICE, 7), family.make_inputs(problem, DEVICE, 7)
    other = family.make_inputs(problem, DEVICE, 8)
    tensors = [n for n, t in first.items() if n != "out" and hasattr(t, "abs")]
    assert tensors and "out" in first
    for name in tensors:
        assert first[name].abs().sum() > 0
        assert first[name].equal(again[name])
        assert not first[name].equal(other[name])


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_every_dataflow_matches_reference(family: KernelFamily, dtype: str) -> None:
    problem = _problem(family, dtype)
    inputs = family.make_inputs(problem, DEVICE, 0)
    reference = family.reference(problem, inputs)
    for dataflow in family.dataflows:
        configs = family.configs(problem, dataflow, DeviceLimits())
        for config in {0: configs[0], -1: configs[-1]}.values():
            inputs["out"].fill_(float("nan"))
            family.launcher(problem, dataflow, config, inputs)()
            out = inputs["out"].float()
            assert not out.isnan().any(), f"{dataflow} {config} left outputs unwritten"
            error = float((out - reference).norm() / reference.norm())
            assert math.isfinite(error) and error <= family.tolerance(dtype), (dataflow, config)


# -- decode attention ---------------------------------------------------------------------------
DECODE = "decode_attention"
DECODE_PROBLEM = "batch=2,heads=4,kv_heads=2,context=96,head_dim=64"


def _decode(dtype: str = "fp16", **sizes: int) -> Problem:
    dims = {"batch": 1, "heads": 8, "kv_heads": 2, "context": 256, "head_dim": 64, **sizes}
    return Problem.of(dtype, **dims)


@pytest.mark.parametrize(("sizes", "dtype"), [
    ({"heads": 3, "kv_heads": 3, "context": 130}, "fp16"),  # multi-head, a ragged last block
    ({"heads": 7, "kv_heads": 1, "context": 100, "head_dim": 128}, "bf16"),  # group of 7
])
def test_decode_attention_splits_and_groups_match_reference(sizes: dict[str, int],
                                                            dtype: str) -> None:
    """One split writing the output directly, several, and the most a context allows."""
    family = load_family(DECODE)
    problem = _decode(dtype, **sizes)
    inputs = family.make_inputs(problem, DEVICE, 3)
    reference = family.reference(problem, inputs)
    configs = family.configs(problem, "triton_splitkv", DeviceLimits())
    chosen = [c for c in configs if c["BLOCK_N"] == 16 and c["num_stages"] == 2
              and c["num_warps"] == 4] + [{}]
    assert {c.get("NUM_SPLITS") for c in chosen} >= {1, 2, 4}
    for config in chosen:
        dataflow = "triton_splitkv" if config else "sdpa"
        inputs["out"].fill_(float("nan"))
        family.launcher(problem, dataflow, config, inputs)()
        error = float((inputs["out"].float() - reference).norm() / reference.norm())
        assert error <= family.tolerance(dtype), (dataflow, config, error)


def test_decode_attention_constraints_and_cost() -> None:
    family = load_family(DECODE)
    problem = _decode(batch=2, heads=32, kv_heads=8, context=512, head_dim=128)
    configs = family.configs(problem, "triton_splitkv", DeviceLimits())
    assert configs and all(c["NUM_SPLITS"] * c["BLOCK_N"] <= 512 for c in configs)
    assert {"BLOCK_N": 128, "NUM_SPLITS": 8, "num_warps": 4, "num_stages": 2} not in configs
    small = family.configs(problem, "triton_splitkv", DeviceLimits(shared_memory_per_block=48_000))
    assert 0 < len(small) < len(configs)
    assert family.configs(problem, "sdpa", DeviceLimits()) == [{}]
    cost = family.cost(problem)
    assert cost.flops == 4 * 2 * 32 * 512 * 128
    assert cost.bytes == (2 * 2 * 8 * 512 * 128 + 2 * 2 * 32 * 128) * 2
    arrays = {d: np.array([v]) for d, v in problem.sizes.items()}
    assert family.cost_arrays(arrays, np.array([2.0])) == (cost.flops, cost.bytes)
    programs = family.programs({**arrays, "NUM_SPLITS": np.array([np.nan])})
    assert programs.tolist() == [2 * 32]  # SDPA: one program per query head
    assert family.programs({**arrays, "NUM_SPLITS": np.array([4.0])}).tolist() == [2 * 8 * 4]
    # the kernels' binaries depend on head_dim and the padded group, not on the context
    assert family.specialization(problem) == family.specialization(
        _decode(batch=7, heads=28, kv_heads=4, context=1000, head_dim=128))


@pytest.mark.parametrize("sizes", [{"heads": 8, "kv_heads": 3}, {"heads": 4, "kv_heads": 8},
                                   {"head_dim": 96}])
def test_decode_attention_refuses_impossible_sizes(sizes: dict[str, int]) -> None:
    family = load_family(DECODE)
    with pytest.raises(PerftuneInputError):
        family.memory_needed(_decode(**sizes))


def test_decode_attention_collect_through_the_cli(cli: Callable[..., tuple[int, str, str]],
                                                  db: Path) -> None:
    """The tiny sweep of the family's docs, on CPU under the interpreter: every row ok."""
    from perftune.store.db import Store

    code, out, _ = cli("collect", "--family", DECODE, "--problem", DECODE_PROBLEM,
                       "--sample", "3", "--db", db, "--no-progress")
    assert code == 0, out
    with Store(db, read_only=True) as store:
        rows = store.query("SELECT dataflow, status, shape, runtime_ms FROM measurements "
                           "WHERE family = 'decode_attention'")
    assert len(rows) == 4  # sdpa plus three sampled split-KV configs
    assert set(rows["status"]) == {"ok"}, rows
    assert rows["dataflow"].value_counts().to_dict() == {"triton_splitkv": 3, "sdpa": 1}
    assert set(rows["shape"]) == {DECODE_PROBLEM} and (rows["runtime_ms"] > 0).all()


def test_decode_attention_problem_lists() -> None:
    from perftune.collect.problems import read_problems_file
    from perftune.settings import PROBLEMS_DIR

    family = load_family(DECODE)

    def listed(name: str) -> list[Problem]:
        return read_problems_file(PROBLEMS_DIR / name, family.dims, "fp16", DECODE)

    train, whole = listed("decode_attention.csv"), listed("decode_attention_whole.csv")
    heldout = listed("decode_attention_heldout.csv")
    assert len(train) >= 60 and len(set(train)) == len(train)
    assert len(whole) >= 20 and set(whole) <= set(train)
    assert len(heldout) >= 8
    assert not {p.shape for p in heldout} & {p.shape for p in train}  # in either dtype
    every = train + heldout
    for problem in every:
        family.memory_needed(problem)  # heads divisible by kv_heads, head_dim 64 or 128
        assert 2 * problem["batch"] * problem["kv_heads"] * problem["context"] * problem[
            "head_dim"] * problem.element_bytes <= 4 * 2**30
    assert {p["heads"] // p["kv_heads"] for p in train} >= {1, 2, 4, 8}
    assert {p["head_dim"] for p in train} == {64, 128}
    assert {p.dtype for p in train} == {p.dtype for p in heldout} == {"fp16", "bf16"}
    assert min(p["batch"] for p in train) == 1 and max(p["batch"] for p in train) == 64
    assert min(p["context"] for p in train) == 512
    assert max(p["context"] for p in train) == 131072
    rms = read_problems_file(PROBLEMS_DIR / "rmsnorm_h200.csv", ("m", "n"), "fp16")
    assert len(rms) >= 40 and len(set(rms)) == len(rms)
    assert all(1 <= p["m"] <= 32768 and 1024 <= p["n"] <= 16384 for p in rms)
