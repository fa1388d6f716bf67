"""Campaign spec files: what a campaign measures, as TOML.

    name = "h200-gemm-breadth"
    chunk_size = 16                  # configs of one problem per task

    [[sweep]]
    family = "gemm"
    problems = "gemm_breadth.csv"    # a problems file (beside the spec, or a shipped list)
    limit = 100                      # only its first 100 problems
    dtype = "fp16"                   # for rows of the file that name none
    dataflows = ["triton", "split_k", "cublas"]
    sample = 6                       # configs per dataflow and problem, seeded; or "all"
    sample_per = "problem"           # a sample per problem, or "sweep": one for all of them
    energy = 0.25                    # NVML energy on a seeded quarter of the problems
    rounds = 2

A spec is checked whole before anything runs: a wrong field is named with where it is.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from perftune.collect.families import KernelFamily, load_family
from perftune.collect.problems import Problem, parse_problem, read_problems_file
from perftune.collect.sweep import SamplePer, SweepSpec, validate
from perftune.errors import PerftuneInputError
from perftune.settings import PROBLEMS_DIR

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class SweepEntry(BaseModel):
    """One family's part of a campaign."""

    model_config = ConfigDict(extra="forbid")

    family: str
    problems: str | list[str] = Field(description="a problems file, or problems such as "
                                                  "'m=128,n=4096,k=4096'")
    dtype: str = "fp16"
    limit: Annotated[int, Field(ge=1)] | None = Field(default=None, description="only the "
                                                      "first N problems")
    dataflows: list[str] | None = None
    sample: Annotated[int, Field(ge=1)] | Literal["all"] = "all"
    sample_per: SamplePer = Field(default="problem", description="draw the sample per "
                                  "problem, or once for the whole sweep ('sweep': the same "
                                  "configs for every problem that allows them)")
    seed: Annotated[int, Field(ge=0)] = 0
    energy: bool | Annotated[float, Field(ge=0, le=1)] = False
    rounds: Annotated[int, Field(ge=1, le=8)] = 2
    devices: list[str] | None = Field(default=None, description="device ids this sweep runs "
                                      "on (default: every device of the cluster)")

    @field_validator("problems")
    @classmethod
    def _some(cls, value: str | list[str]) -> str | list[str]:
        if not value:
            raise ValueError("name a problems file or list at least one problem")
        return value


class CampaignSpec(BaseModel):
    """A whole campaign spec file."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]
    description: str = ""
    chunk_size: Annotated[int, Field(ge=1, le=1024)] = 16
    timeout_s: Annotated[float, Field(gt=0)] = 180.0
    quarantine_after: Annotated[int, Field(ge=1)] = 3
    compile_workers: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="compile processes per worker (default: the cores shared "
        "among the workers)")
    slurm: dict[str, Any] = Field(default_factory=dict, description="dask-jobqueue "
                                  "SLURMCluster settings for --cluster slurm, and jobs")
    sweep: Annotated[list[SweepEntry], Field(min_length=1)]


@dataclass(frozen=True)
class Sweep:
    """One sweep of a campaign, ready to plan: the collector's spec and where it runs."""

    spec: SweepSpec
    devices: tuple[str, ...] | None


@dataclass(frozen=True)
class Campaign:
    """A parsed, checked spec: its text (kept in the store, for resume) and its sweeps."""

    spec: CampaignSpec
    text: str
    path: str | None
    sweeps: tuple[Sweep, ...]

    @property
    def name(self) -> str:
        return self.spec.name


def load_spec(path: str | Path) -> Campaign:
    """Read and check a spec file; raises PerftuneInputError naming what is wrong."""
    source = Path(path)
    if not source.is_file():
        raise PerftuneInputError(f"campaign spec {source} does not exist")
    return parse_spec(source.read_text(encoding="utf-8"), source)


def parse_spec(text: str, path: Path | None = None) -> Campaign:
    """A spec from its TOML text; ``path`` names it in errors and anchors relative files."""
    where = str(path) if path else "campaign spec"
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PerftuneInputError(f"{where}: not valid TOML: {exc}") from None
    try:
        spec = CampaignSpec.model_validate(raw)
    except ValidationError as exc:
        raise PerftuneInputError(f"{where}: {_first_error(exc)}") from None
    base = path.parent if path else Path.cwd()
    sweeps = tuple(sweep for index, entry in enumerate(spec.sweep)
                   for sweep in _sweeps(entry, spec, base, f"{where}: sweep[{index}]"))
    return Campaign(spec, text, str(path) if path else None, sweeps)


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    field = ""
    for part in error["loc"]:
        field += f"[{part}]" if isinstance(part, int) else (f".{part}" if field else str(part))
    count = exc.error_count()
    more = f" (and {count - 1} more problem{'s' if count > 2 else ''})" if count > 1 else ""
    value = error.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"{field or 'spec'}: {error['msg']}{shown}{more}"


def _sweeps(entry: SweepEntry, spec: CampaignSpec, base: Path, where: str) -> list[Sweep]:
    """The entry as collector specs: with energy on a fraction, split into the problems
    measured with energy and those without."""
    try:
        family = load_family(entry.family)
        problems = _problems(entry, family, base)[:entry.limit]
        common: dict[str, Any] = {
            "family": entry.family, "dataflows": entry.dataflows,
            "sample": None if entry.sample == "all" else entry.sample,
            "sample_per": entry.sample_per, "seed": entry.seed,
            "rounds": entry.rounds, "max_rounds": max(4, entry.rounds),
            "timeout_s": spec.timeout_s, "chunk_size": spec.chunk_size,
            "compile_workers": spec.compile_workers}
        fraction = float(entry.energy)
        chosen = set(random.Random(f"energy:{entry.seed}").sample(
            range(len(problems)), round(fraction * len(problems))))
        parts = [SweepSpec(problems=[p for i, p in enumerate(problems) if (i in chosen) == on],
                           energy=on, **common) for on in (True, False)]
        parts = [part for part in parts if part.problems]
        for part in parts:
            validate(part)
    except PerftuneInputError as exc:
        raise PerftuneInputError(f"{where}: {exc}") from None
    devices = tuple(entry.devices) if entry.devices else None
    return [Sweep(part, devices) for part in parts]


def _problems(entry: SweepEntry, family: KernelFamily, base: Path) -> list[Problem]:
    if isinstance(entry.problems, list):
        return [parse_problem(text, family.dims, entry.dtype) for text in entry.problems]
    path = Path(entry.problems)
    for candidate in (path, base / path, PROBLEMS_DIR / path):
        if candidate.is_file():
            found = read_problems_file(candidate, family.dims, entry.dtype, family.name)
            if not found:
                raise PerftuneInputError(f"problems file {candidate} lists no "
                                         f"{entry.family} problem")
            return found
    raise PerftuneInputError(f"problems: no file {entry.problems!r} beside the spec or among "
                             f"the shipped lists ({PROBLEMS_DIR})")
