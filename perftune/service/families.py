"""The kernel families the service answers for: every registered one, read from what each
declares (sizes, dataflows and their spaces, dtypes, library dataflow, cost), never from its
name. A request's sizes are checked against its family here, for the schemas."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path

from perftune.collect.families import BUILTIN, KernelFamily, load_family
from perftune.collect.problems import Problem, make_problem
from perftune.errors import PerftuneInputError

DEFAULT_FAMILY = "gemm"  # a request that names no family asks about GEMM
FAMILIES: tuple[str, ...] = tuple(BUILTIN)
MAX_SIZE = 1 << 24  # any size of any family, as GEMM's m, n and k always were


@functools.cache
def kernel(name: str) -> KernelFamily:
    """The registered family ``name`` (loaded once; ``name`` is one of :data:`FAMILIES`)."""
    if name not in FAMILIES:
        raise PerftuneInputError(f"unknown family {name!r}; families: {', '.join(FAMILIES)}")
    return load_family(name)


def unknown_family(name: str) -> str | None:
    """Why ``name`` is no family this service answers for, or None if it is one."""
    if name in FAMILIES:
        return None
    shown = name if len(name) <= 40 else name[:40] + "..."
    return f"unknown family {shown!r}; families: {', '.join(FAMILIES)}"


def problem_of(family: str, sizes: Mapping[str, object], dtype: str) -> Problem:
    """The problem of ``family`` with ``sizes`` (names and values as sent) and ``dtype``;
    raises :class:`PerftuneInputError` naming a missing, unknown or bad size, or a dtype the
    family does not run."""
    kind = kernel(family)
    if dtype not in kind.dtypes:
        raise PerftuneInputError(f"dtype: {family} runs {', '.join(kind.dtypes)}, not {dtype}")
    problem = make_problem(sizes, kind.dims, dtype, source=family)
    too_large = [name for name, value in problem.dims if value > MAX_SIZE]
    if too_large:
        raise PerftuneInputError(f"problem {family!r}: size {', '.join(too_large)} over "
                                 f"{MAX_SIZE:,}")
    # The check the CLI applies too: sizes the family refuses, operands over the 2^31
    # elements the kernels index.
    return kind.validate(problem)


def check_dataflows(family: str, dataflows: list[str]) -> None:
    """Refuse a dataflow ``family`` does not have, naming the ones it has."""
    kind = kernel(family)
    unknown = [d for d in dataflows if d not in kind.dataflows]
    if unknown:
        raise PerftuneInputError(f"{family} has no dataflow {', '.join(map(repr, unknown))}; "
                                 f"choose from {', '.join(kind.dataflows)}")


@functools.cache
def family_spaces() -> dict[str, dict[str, dict[str, tuple[int, ...]]]]:
    """Per family and dataflow, the parameter space."""
    return {name: {d: dict(kernel(name).space(d)) for d in kernel(name).dataflows}
            for name in FAMILIES}


def model_file(runtime_model: Path, family: str) -> Path:
    """Where ``family``'s runtime model lives: the configured runtime model itself for the
    default family, else FAMILY_runtime.skops beside it (power and energy models beside
    each, as perftune.model.runtime.model_path names them)."""
    if family == DEFAULT_FAMILY:
        return runtime_model
    return runtime_model.with_name(f"{family}_runtime{runtime_model.suffix or '.skops'}")
