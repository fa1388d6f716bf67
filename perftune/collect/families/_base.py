"""The kernel-family interface: what a new family implements to be swept, modelled and tuned."""

from __future__ import annotations

import abc
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from perftune.collect.problems import Problem

if TYPE_CHECKING:
    import torch

Config = dict[str, int]
Inputs = dict[str, Any]

# Hopper's opt-in shared memory per block, used when the device is not known (interpreter).
DEFAULT_SHARED_MEMORY = 232_448


@dataclass(frozen=True)
class Cost:
    """Work of one problem: floating-point operations and the fewest bytes moved."""

    flops: float
    bytes: float


@dataclass(frozen=True)
class DeviceLimits:
    shared_memory_per_block: int = DEFAULT_SHARED_MEMORY
    memory_bytes: int | None = None


class KernelFamily(abc.ABC):
    """A kernel family: its dataflows (alternative implementations), each with a parameter
    space, and how to make inputs, launch a config, check it and count its work.

    A launch writes the family's output tensor ``inputs["out"]``; the collector poisons it
    with NaN first, so every element must be written.
    """

    name: ClassVar[str]
    dims: ClassVar[tuple[str, ...]]
    dataflows: ClassVar[tuple[str, ...]]
    dtypes: ClassVar[tuple[str, ...]] = ("fp16", "bf16", "fp32")

    @abc.abstractmethod
    def space(self, dataflow: str) -> dict[str, tuple[int, ...]]:
        """Each parameter of ``dataflow`` and its choices (empty for a library call)."""

    @abc.abstractmethod
    def cost(self, problem: Problem) -> Cost:
        """FLOPs and minimum bytes of a problem, for throughput and the roofline."""

    @abc.abstractmethod
    def make_inputs(self, problem: Problem, device: str, seed: int) -> Inputs:
        """Fresh random inputs (never zeros) and the output tensor ``out``."""

    @abc.abstractmethod
    def launcher(self, problem: Problem, dataflow: str, config: Config,
                 inputs: Inputs) -> Callable[[], None]:
        """A callable that runs ``config`` once on ``inputs``, writing ``inputs['out']``."""

    @abc.abstractmethod
    def reference(self, problem: Problem, inputs: Inputs) -> torch.Tensor:
        """The exact answer in float32 or better."""

    # -- hooks with defaults --------------------------------------------------------------
    def is_valid(self, problem: Problem, dataflow: str, config: Config,
                 limits: DeviceLimits) -> bool:
        """Constraints: False for configs that cannot run on this device and problem."""
        return True

    def compile(self, problem: Problem, dataflow: str, config: Config, device: str) -> None:
        """Compile ``config`` ahead of timing (run in a process pool); by default nothing."""

    def specialization(self, problem: Problem) -> tuple[object, ...]:
        """What compiled code depends on besides the config (Triton specializes integer
        arguments on divisibility by 16 and on being 1): problems alike here share binaries."""
        return tuple((v % 16 == 0, v == 1) for v in problem.sizes.values())

    def tolerance(self, dtype: str) -> float:
        """Largest accepted ||out - ref|| / ||ref||."""
        return {"fp16": 5e-3, "bf16": 1.6e-2, "fp32": 5e-3}[dtype]

    def memory_needed(self, problem: Problem) -> tuple[float, int]:
        """Bytes the inputs, output and reference take, and the largest operand's elements."""
        cost = self.cost(problem)
        return 3 * cost.bytes, max(problem.sizes.values()) ** 2

    # -- derived ------------------------------------------------------------------------------
    def configs(self, problem: Problem, dataflow: str, limits: DeviceLimits) -> list[Config]:
        """Every valid config of ``dataflow`` for ``problem``, in a fixed order."""
        space = self.space(dataflow)
        names = sorted(space)
        every = (dict(zip(names, values, strict=True))
                 for values in itertools.product(*(space[n] for n in names)))
        return [c for c in every if self.is_valid(problem, dataflow, c, limits)]

    def check_dataflow(self, dataflow: str) -> None:
        from perftune.errors import PerftuneInputError

        if dataflow not in self.dataflows:
            raise PerftuneInputError(
                f"family {self.name!r} has no dataflow {dataflow!r}; "
                f"choose from {', '.join(self.dataflows)}")

    def check_dtype(self, dtype: str) -> None:
        from perftune.errors import PerftuneInputError

        if dtype not in self.dtypes:
            raise PerftuneInputError(
                f"family {self.name!r} does not support dtype {dtype!r}; "
                f"choose from {', '.join(self.dtypes)}")


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[name]


def random_tensor(shape: tuple[int, ...], dtype: str, device: str,
                  generator: torch.Generator) -> torch.Tensor:
    """Standard-normal values in ``dtype``: random, so unwritten or misindexed output shows."""
    import torch

    values = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
    return values.to(torch_dtype(dtype))


def generator_for(device: str, seed: int) -> torch.Generator:
    import torch

    return torch.Generator(device=device).manual_seed(seed)


def as_mapping(config: Mapping[str, int]) -> Config:
    return {k: int(v) for k, v in config.items()}
