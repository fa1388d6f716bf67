"""Problems: the sizes and dtype a kernel family runs on, parsed and validated."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perftune.errors import PerftuneInputError
from perftune.store.keys import canonical_shape

DTYPES: dict[str, int] = {"fp16": 2, "bf16": 2, "fp32": 4}
_SIZE_ALIASES = {"float16": "fp16", "half": "fp16", "bfloat16": "bf16", "float32": "fp32",
                 "float": "fp32"}
_INT32_ELEMENTS = 2**31 - 1


@dataclass(frozen=True)
class Problem:
    """One problem of a family: named sizes (e.g. m, n, k) and an element type, and where a
    tuner or the service asks about one device, that device. Sizes read as attributes too
    (``problem.m``)."""

    dims: tuple[tuple[str, int], ...]
    dtype: str
    device: str | None = None

    @classmethod
    def of(cls, dtype: str, **dims: int) -> Problem:
        return cls(tuple(dims.items()), dtype)

    def on(self, device: str | None) -> Problem:
        """The same problem on ``device``."""
        return Problem(self.dims, self.dtype, device)

    def __getattr__(self, name: str) -> int:
        if name.startswith("_") or name == "dims":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        for size, value in self.dims:
            if size == name:
                return value
        raise AttributeError(f"problem {self} has no size {name!r}")

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
        sizes: dict[str, str] = {}
        for part in re.split(r"[,\s]+", text):
            if not part:
                continue
            name, equals, value = part.partition("=")
            name = name.strip().lower()
            if not equals or not name:
                raise PerftuneInputError(
                    f"problem {text!r}: {part!r} is not name=size; write e.g. "
                    f"{','.join(f'{d}=4096' for d in dim_names)}")
            _refuse_repeat(name, sizes, f"problem {text!r}")
            sizes[name] = value.strip()
    else:
        values = re.split(r"[x×,\s]+", text.lower())
        if len(values) != len(dim_names):
            raise PerftuneInputError(
                f"problem {text!r} has {len(values)} sizes; this family needs "
                f"{len(dim_names)} ({'x'.join(d.upper() for d in dim_names)}), e.g. "
                f"{'x'.join(['4096'] * len(dim_names))}")
        sizes = dict(zip(dim_names, values, strict=True))
    return make_problem(sizes, dim_names, dtype, source=text)


def _refuse_repeat(name: str, seen: Iterable[str], where: str) -> None:
    if name in seen:
        raise PerftuneInputError(f"{where} gives the size {name} twice; give each size once")


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


GEMM_DIMS = ("m", "n", "k")


def read_problems_file(path: str | Path, dim_names: Sequence[str], dtype: str,
                       family: str | None = None) -> list[Problem]:
    """Problems from a CSV with a header of size names (and optionally ``dtype``), or from a
    JSON list of objects such as ``{"m": 128, "n": 4096, "k": 4096}``. A file with a
    ``family`` column lists several families' problems: only ``family``'s rows are read."""
    source = Path(path)
    if not source.is_file():
        raise PerftuneInputError(f"problems file {source} does not exist")
    text = _read_text(source)
    json_file = source.suffix.lower() == ".json"
    rows = _json_rows(source, text) if json_file else _csv_rows(source, text)
    problems = []
    for index, row in enumerate(rows, start=1):
        if not isinstance(row, Mapping):
            raise PerftuneInputError(f"{source}: entry {index} is not an object of sizes")
        if None in row:  # csv: more values than the header names
            raise PerftuneInputError(f"{source}:{index}: more values than the header has "
                                     f"names")
        fields: dict[str, object] = {}
        for raw_name, value in row.items():
            name = str(raw_name).strip().lower()
            _refuse_repeat(name, fields, f"{source}: entry {index}")
            fields[name] = value
        fields = {k: v for k, v in fields.items() if k not in ("name", "comment", "source")}
        row_dtype = str(fields.pop("dtype", "") or dtype)
        row_family = str(fields.pop("family", "") or "")
        if family and row_family and row_family != family:
            continue
        problems.append(make_problem(fields, dim_names, row_dtype, source=f"{source}:{index}"))
    if not problems:
        raise PerftuneInputError(f"problems file {source} holds no problems")
    return problems


def _read_text(source: Path) -> str:
    data = source.read_bytes()
    if b"\0" in data:
        raise PerftuneInputError(f"problems file {source} is binary, not CSV or JSON text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PerftuneInputError(f"problems file {source} is not UTF-8 text (byte "
                                 f"0x{data[exc.start]:02x} at offset {exc.start})") from None


def _json_rows(source: Path, text: str) -> list[Any]:
    def unique_names(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for name, _ in pairs:
            _refuse_repeat(name.strip().lower(), seen, f"problems file {source}")
            seen.add(name.strip().lower())
        return dict(pairs)

    try:
        rows = json.loads(text, object_pairs_hook=unique_names)
    except json.JSONDecodeError as exc:
        raise PerftuneInputError(f"problems file {source} is not valid JSON: {exc}") from None
    except RecursionError:
        raise PerftuneInputError(f"problems file {source} is nested too deeply to be a list "
                                 f"of problems") from None
    if not isinstance(rows, list):
        raise PerftuneInputError(f"problems file {source} must hold a JSON list of objects")
    return rows


def _csv_rows(source: Path, text: str) -> list[dict[Any, Any]]:
    lines = [line for line in io.StringIO(text, newline="") if not line.startswith("#")]
    try:
        reader = csv.DictReader(lines)
        header = [str(name).strip().lower() for name in reader.fieldnames or ()]
        for position, name in enumerate(header):
            _refuse_repeat(name, header[:position], f"problems file {source}'s header")
        return list(reader)
    except csv.Error as exc:
        raise PerftuneInputError(f"problems file {source} is not readable CSV: {exc}") from None


def shape_sizes(shape: str) -> dict[str, int]:
    """The sizes of a canonical shape (``"m=64,n=4096,k=4096"``)."""
    return {name: int(value) for name, value in (part.split("=", 1)
                                                 for part in shape.split(",") if "=" in part)}


def spread_out(shapes: Sequence[str], n: int) -> list[str]:
    """``n`` of ``shapes`` (canonical shapes of one family) far apart in log2 size: the one
    nearest the middle first, then each time the one farthest from those taken (a greedy
    k-center). A GPU new to the store is measured on these first, so that its few problems
    span the sizes it will be asked about."""
    points = [[math.log2(max(v, 1)) for v in shape_sizes(shape).values()] for shape in shapes]
    if not points or n <= 0:
        return []
    middle = [sum(column) / len(points) for column in zip(*points, strict=True)]
    chosen = [min(range(len(points)), key=lambda i: math.dist(points[i], middle))]
    gaps = [math.dist(p, points[chosen[0]]) for p in points]
    while len(chosen) < min(n, len(points)):
        far = max(range(len(points)), key=gaps.__getitem__)
        chosen.append(far)
        gaps = [min(g, math.dist(p, points[far])) for g, p in zip(gaps, points, strict=True)]
    return [shapes[i] for i in chosen]
