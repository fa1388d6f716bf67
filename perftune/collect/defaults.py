"""The embedded default collection: what `perftune collect` measures when given no problems:
each family's own defaults (:attr:`KernelFamily.gpu_defaults` and ``cpu_defaults``), a seeded
sample of each dataflow's configs."""

from __future__ import annotations

from perftune.collect.families import KernelFamily
from perftune.errors import PerftuneInputError

GPU_SAMPLE = 48
CPU_SAMPLE = 3  # under the Triton interpreter on CPU: a few configs each


def default_problems(family: KernelFamily, gpu: bool) -> tuple[list[str], int]:
    """The family's default problems on a GPU (or under the interpreter) and the sample size."""
    problems = list(family.gpu_defaults if gpu else family.cpu_defaults)
    if not problems:
        raise PerftuneInputError(f"family {family.name!r} has no default problems; give "
                                 f"--problem or --problems-file")
    return problems, GPU_SAMPLE if gpu else CPU_SAMPLE
