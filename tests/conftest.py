"""Shared fixtures: a fresh store path, the CLI run in-process, and a file fingerprint."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from perftune.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_default_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may touch data/perftune.duckdb: the default store points into tmp_path."""
    monkeypatch.setenv("PERFTUNE_DB", str(tmp_path / "default.duckdb"))
    monkeypatch.setenv("PERFTUNE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton-cache"))


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "store.duckdb"


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """Run ``perftune ARGS`` in this process; returns (exit code, stdout, stderr)."""

    def run(*args: str | os.PathLike[str]) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture(scope="session")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store built from the shipped dataset, once per test session (read it read-only)."""
    from perftune.store.dataset import build_store

    path = tmp_path_factory.mktemp("shipped") / "shipped.duckdb"
    build_store(path)
    return path


@pytest.fixture(scope="session")
def model_file(shipped: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Small forests trained on the shipped data (fewer trees than the default, for time): the
    runtime model, with the power and energy models beside it."""
    from perftune.model.runtime import fit_model, model_path, save_model
    from perftune.store.db import Store

    path = tmp_path_factory.mktemp("model") / "gemm_runtime.skops"
    with Store(shipped, read_only=True) as store:
        for target in ("runtime", "power", "energy"):
            save_model(model_path(target, path), *fit_model(store, target=target,
                                                           n_estimators=24))
    return path


def fingerprint(path: Path) -> str | None:
    """Hash of a file (and its WAL), or None when it does not exist."""
    if not path.exists():
        return None
    digest = hashlib.sha256(path.read_bytes())
    wal = path.with_name(path.name + ".wal")
    if wal.exists():
        digest.update(wal.read_bytes())
    return digest.hexdigest()
