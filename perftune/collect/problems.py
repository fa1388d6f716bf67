"""Problems: the sizes and dtype a kernel family runs on, parsed and validated."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from perftune.errors import PerftuneInputError
from perftune.store.keys import canonical_shape

DTYPES: dict[str, int] = {"fp16": 2, "bf16": 2, "fp32": 4}
_SIZE_ALIASES = {"float16": "fp16", "half": "fp16", "bfloat16": "bf16", "float32": "fp32",
                 "float": "fp32"}
_INT32_ELEMENTS = 2**31 - 1


@dataclass(frozen=True)
class Problem:
    """One problem of a family: named sizes (e.g. m, n, k) and an element type."""

    dims: tuple[tuple[str, int], ...]
    dtype: str

    @classmethod
    def of(cls, dtype: str, **dims: int) -> Problem:
        return cls(tuple(dims.items()), dtype)

    @property
    def sizes(self) -> dict[str, int]:
        return dict(self.dims)

    def __getitem__(self, name: str) -> int:
        return self.sizes[name]

    @property
    def shape(self) -> str:
        return canonical_shape(self.sizes)

    @property
    def element_bytes(self) -> int:
        return DTYPES[self.dtype]

    def __str__(self) -> str:
        return f"{'x'.join(str(v) for _, v in self.dims)} {self.dtype}"


def normalize_dtype(dtype: str) -> str:
    name = _SIZE_ALIASES.get(dtype.lower(), dtype.lower())
    if name not in DTYPES:
        raise PerftuneInputError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return name


def parse_problem(text: str, dim_names: Sequence[str], dtype: str) -> Problem:
    """Parse ``128x4096x4096`` (sizes in the family's order) or ``m=128,n=4096,k=4096``."""
    text = text.strip()
    if "=" in text:
        pairs = [p.split("=", 1) for p in re.split(r"[,\s]+", text) if p]
        sizes = {name.strip().lower(): value.strip() for name, value in pairs}
    else:
        values = re.split(r"[x×,\s]+", text.lower())
        if len(values) != len(dim_names):
            raise PerftuneInputError(
                f"problem {text!r} has {len(values)} sizes; this family needs "
                f"{len(dim_names)} ({'x'.join(d.upper() for d in dim_names)}), e.g. "
                f"{'x'.join(['4096'] * len(dim_names))}")
        sizes = dict(zip(dim_names, values, strict=True))
    return make_problem(sizes, dim_names, dtype, source=text)


def make_problem(sizes: Mapping[str, object], dim_names: Sequence[str], dtype: str,
                 source: str = "") -> Problem:
    label = source or ",".join(f"{k}={v}" for k, v in sizes.items())
    missing = [d for d in dim_names if d not in sizes]
    extra = [d for d in sizes if d not in dim_names]
    if missing or extra:
        raise PerftuneInputError(
            f"problem {label!r}: this family's sizes are {', '.join(dim_names)}"
            + (f"; missing {', '.join(missing)}" if missing else "")
            + (f"; unknown {', '.join(extra)}" if extra else ""))
    dims: list[tuple[str, int]] = []
    for name in dim_names:
        raw = sizes[name]
        try:
            value = int(str(raw))
        except ValueError:
            raise PerftuneInputError(
                f"problem {label!r}: size {name}={raw!r} is not an integer") from None
        if value <= 0:
            raise PerftuneInputError(
                f"problem {label!r}: size {name}={value} must be a positive integer")
        dims.append((name, value))
    return Problem(tuple(dims), normalize_dtype(dtype))


def check_fits(problem: Problem, bytes_needed: float, memory_bytes: int | None,
               largest_operand: int) -> None:
    """Refuse problems that cannot fit the device or the kernels' 32-bit indexing."""
    if largest_operand > _INT32_ELEMENTS:
        raise PerftuneInputError(
            f"problem {problem}: an operand has {largest_operand:,} elements, more than the "
            f"2^31 that the kernels index; use smaller sizes")
    if memory_bytes and bytes_needed > 0.8 * memory_bytes:
        raise PerftuneInputError(
            f"problem {problem}: needs about {bytes_needed / 2**30:.1f} GiB, more than the "
            f"device's {memory_bytes / 2**30:.1f} GiB allows; use smaller sizes")


def read_problems_file(path: str | Path, dim_names: Sequence[str], dtype: str,
                       family: str | None = None) -> list[Problem]:
    """Problems from a CSV with a header of size names (and optionally ``dtype``), or from a
    JSON list of objects such as ``{"m": 128, "n": 4096, "k": 4096}``. A file with a
    ``family`` column lists several families' problems: only ``family``'s rows are read."""
    source = Path(path)
    if not source.is_file():
        raise PerftuneInputError(f"problems file {source} does not exist")
    rows: Iterable[Mapping[str, object]]
    if source.suffix.lower() == ".json":
        try:
            rows = json.loads(source.read_text())
        except json.JSONDecodeError as exc:
            raise PerftuneInputError(f"problems file {source} is not valid JSON: {exc}") from None
        if not isinstance(rows, list):
            raise PerftuneInputError(f"problems file {source} must hold a JSON list of objects")
    else:
        with source.open(newline="") as handle:
            rows = list(csv.DictReader(line for line in handle if not line.startswith("#")))
    problems = []
    for index, row in enumerate(rows, start=1):
        if not isinstance(row, Mapping):
            raise PerftuneInputError(f"{source}: entry {index} is not an object of sizes")
        fields = {str(k).strip().lower(): v for k, v in row.items() if k is not None}
        fields = {k: v for k, v in fields.items() if k not in ("name", "comment", "source")}
        row_dtype = str(fields.pop("dtype", "") or dtype)
        row_family = str(fields.pop("family", "") or "")
        if family and row_family and row_family != family:
            continue
        problems.append(make_problem(fields, dim_names, row_dtype, source=f"{source}:{index}"))
    if not problems:
        raise PerftuneInputError(f"problems file {source} holds no problems")
    return problems
