"""The kernel-family interface: what a new family implements to be swept, modelled and tuned."""

from __future__ import annotations

import abc
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from perftune.collect.families import _features
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
    # The vendor or framework implementation (cuBLAS, torch, SDPA): the baseline a tuned
    # kernel must beat, and a dataflow with no parameters.
    library_dataflow: ClassVar[str | None] = None
    # What `perftune collect` measures without --problem: on a GPU, and under the Triton
    # interpreter on CPU (tiny problems: the interpreter runs a kernel in Python).
    gpu_defaults: ClassVar[tuple[str, ...]] = ()
    cpu_defaults: ClassVar[tuple[str, ...]] = ()
    # Modules that compile() imports (its kernels): the compile pool imports them once, in the
    # process its processes are forked from, instead of at each process's first config.
    compile_modules: ClassVar[tuple[str, ...]] = ()

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

    def validate(self, problem: Problem) -> Problem:
        """Refuse a problem the family's kernels cannot run (its dtype, sizes the family
        rejects, an operand over the 2^31 elements the kernels index): the one check that
        every command and the service apply. Returns the problem."""
        from perftune.collect.problems import check_fits

        self.check_dtype(problem.dtype)
        check_fits(problem, 0.0, None, self.memory_needed(problem)[1])
        return problem

    def memory_needed(self, problem: Problem) -> tuple[float, int]:
        """Bytes the inputs, output and reference take, and the largest operand's elements."""
        cost = self.cost(problem)
        return 3 * cost.bytes, max(problem.sizes.values()) ** 2

    # -- what models read (numpy only: the service predicts without torch) ------------------
    def programs(self, columns: _features.Columns) -> np.ndarray:
        """Programs (CTAs) one launch runs, per row of sizes and config columns; 1 when the
        family does not say."""
        return np.ones(len(np.asarray(columns["dtype"])))

    def cost_arrays(self, sizes: dict[str, np.ndarray], element_bytes: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`cost` over arrays of sizes (FLOPs, bytes); by default one call per row."""
        flops, moved = np.zeros(len(element_bytes)), np.zeros(len(element_bytes))
        dtypes = {2: "fp16", 4: "fp32"}
        for i in range(len(element_bytes)):
            problem = Problem(tuple((d, int(sizes[d][i])) for d in self.dims),
                              dtypes[int(element_bytes[i])])
            cost = self.cost(problem)
            flops[i], moved[i] = cost.flops, cost.bytes
        return flops, moved

    def feature_names(self) -> tuple[str, ...]:
        """The model's features, in order: the generic ones and the family's own."""
        return (*_features.generic_feature_names(self), *self.extra_feature_names())

    def features(self, columns: _features.Columns) -> dict[str, np.ndarray]:
        """:meth:`feature_names` computed for rows of sizes, dtype, dataflow, config and device
        columns (perftune.collect.families._features)."""
        base = _features.generic_features(self, columns)
        return {**base, **self.extra_features(columns, base)}

    def extra_feature_names(self) -> tuple[str, ...]:
        """Names of :meth:`extra_features`; none by default."""
        return ()

    def extra_features(self, columns: _features.Columns, base: dict[str, np.ndarray]
                       ) -> dict[str, np.ndarray]:
        """Features only this family knows (given the generic ones); none by default."""
        return {}

    def roofline(self, features: _features.Columns) -> dict[str, np.ndarray]:
        """Roofline time and its parts from log_flops, log_min_bytes, peak_tflops and
        bandwidth_gbs (and dataflow); the plain roofline by default."""
        return _features.plain_roofline(2.0 ** np.asarray(features["log_flops"], float),
                                        2.0 ** np.asarray(features["log_min_bytes"], float),
                                        np.asarray(features["peak_tflops"], float),
                                        np.asarray(features["bandwidth_gbs"], float))

    def candidate_mask(self, problem: Problem, candidates: Any) -> np.ndarray:
        """Which rows of ``candidates`` (a frame of dataflow, config parameters and the
        device's shared_memory_per_block) can run ``problem``: :meth:`is_valid` per row."""
        params = [p for p in self.params() if p in candidates]
        keep = []
        for row in candidates[["dataflow", "shared_memory_per_block", *params]].itertuples(
                index=False):
            values = row._asdict()
            config = {p: int(values[p]) for p in params if values[p] == values[p]}  # not NaN
            limits = DeviceLimits(shared_memory_per_block=int(values["shared_memory_per_block"]))
            keep.append(self.is_valid(problem, values["dataflow"], config, limits))
        return np.asarray(keep, dtype=bool)

    def params(self) -> tuple[str, ...]:
        """Every config parameter of any dataflow, in a fixed order."""
        names: list[str] = []
        for dataflow in self.dataflows:
            names += [p for p in self.space(dataflow) if p not in names]
        return tuple(names)

    # -- derived ------------------------------------------------------------------------------
    def every_config(self, dataflow: str) -> list[Config]:
        """Every config of ``dataflow``'s space, valid for some problem or not, in a fixed
        order."""
        space = self.space(dataflow)
        names = sorted(space)
        return [dict(zip(names, values, strict=True))
                for values in itertools.product(*(space[n] for n in names))]

    def configs(self, problem: Problem, dataflow: str, limits: DeviceLimits) -> list[Config]:
        """Every valid config of ``dataflow`` for ``problem``, in a fixed order."""
        return [c for c in self.every_config(dataflow)
                if self.is_valid(problem, dataflow, c, limits)]

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
