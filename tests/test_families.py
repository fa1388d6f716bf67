"""Conformance suite that every kernel family passes (on the GPU when there is one, else
under the Triton interpreter)."""

from __future__ import annotations

import math

import pytest

from perftune.collect.device import select_mode, torch_device
from perftune.collect.families import BUILTIN, DeviceLimits, KernelFamily, load_family
from perftune.collect.problems import Problem
from perftune.errors import PerftuneInputError

MODE = select_mode(None)  # before any kernel module imports triton
DEVICE = torch_device(MODE)
SMALL = {"gemm": Problem.of("fp16", m=20, n=40, k=136),
         "rmsnorm": Problem.of("fp16", m=5, n=300)}


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
