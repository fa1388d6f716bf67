"""The shipped dataset (Parquet in the package's data/dataset/) and its held-out problems.

A fresh machine gets its default store by importing the shipped Parquet: ``perftune db init``
does it, and opening the default store does it by itself the first time.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pandas as pd

from perftune.errors import StoreError
from perftune.settings import DATASET_DIR, HELDOUT_FILE, default_db_path
from perftune.store.db import Store
from perftune.store.keys import canonical_shape

_NOT_SIZES = ("family", "dtype", "source", "name", "comment")


def listed_problems(path: Path, family: str = "gemm") -> list[tuple[str, str, str]]:
    """(family, dtype, shape) of every problem of a problem file (data/problems/*.csv), in
    order: the size columns in the file's order (the family's), those left empty in a row
    not being that row's family's; a file without a family or dtype column lists ``family``
    problems in fp16."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(line for line in handle if not line.startswith("#"))
        rows = list(reader)
        sizes = [c for c in reader.fieldnames or () if c not in _NOT_SIZES]
    return [(row.get("family") or family, row.get("dtype") or "fp16",
             canonical_shape({name: int(row[name]) for name in sizes if row[name]}))
            for row in rows]


def heldout_files(path: Path = HELDOUT_FILE) -> list[Path]:
    """The held-out problem files: ``heldout.csv`` and every ``FAMILY_heldout.csv`` beside
    it."""
    return [path, *sorted(path.parent.glob("*_heldout.csv"))]


def heldout_problems(path: Path = HELDOUT_FILE) -> set[tuple[str, str, str]]:
    """(family, dtype, shape) of every held-out problem: no model may train on these."""
    return {problem for file in heldout_files(path)
            for problem in listed_problems(file, file.name.removesuffix("_heldout.csv"))}


def heldout_mask(rows: pd.DataFrame, family: str = "gemm") -> np.ndarray:
    """True for the rows (with dtype and shape columns) of held-out problems."""
    held = heldout_problems()
    return np.array([(family, d, s) in held
                     for d, s in zip(rows["dtype"], rows["shape"], strict=True)], dtype=bool)


def build_store(path: Path | None = None, source: Path = DATASET_DIR) -> dict[str, int]:
    """Import the shipped dataset into a store (the default one unless ``path``); rows already
    there are kept. Returns the new rows per table."""
    if not (source / "manifest.json").is_file():
        raise StoreError(f"no shipped dataset at {source}; is this a full checkout?")
    with Store(path) as store:
        return store.import_parquet(source)


def ensure_default_store() -> Path | None:
    """Build the default store from the shipped dataset if it does not exist yet. Returns its
    path when it was built. It is built beside its place and moved there once complete, so
    that an interrupted build leaves no half store to be taken for a whole one next time."""
    path = default_db_path()
    if path.exists() or not (DATASET_DIR / "manifest.json").is_file():
        return None
    building = path.with_name(path.name + ".building")
    for stale in (building, building.with_name(building.name + ".wal")):
        stale.unlink(missing_ok=True)
    try:
        build_store(building)
        os.replace(building, path)
    finally:
        building.unlink(missing_ok=True)
    return path
