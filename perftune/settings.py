"""Where perftune keeps its files, and the settings shared by the CLI and the service.

One pydantic-settings class reads ``PERFTUNE_*`` from the environment. The default store and
models live in a user data directory (``$PERFTUNE_HOME``, else ``$XDG_DATA_HOME/perftune``,
else ``~/.local/share/perftune``), built from the dataset shipped in the package the first
time a command needs them, so an installed perftune never writes into its own install.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

PACKAGE_DATA = Path(__file__).resolve().parent / "data"
DATASET_DIR = PACKAGE_DATA / "dataset"
PROBLEMS_DIR = PACKAGE_DATA / "problems"
HELDOUT_FILE = PROBLEMS_DIR / "heldout.csv"
RUNTIME_MODEL_NAME = "gemm_runtime.skops"


def home() -> Path:
    """The user data directory: the default store and the default models live here."""
    explicit = os.environ.get("PERFTUNE_HOME")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "perftune"


def default_db_path() -> Path:
    """``$PERFTUNE_DB`` if set, else ``perftune.duckdb`` in :func:`home`."""
    return Path(os.environ.get("PERFTUNE_DB") or home() / "perftune.duckdb")


def default_model_path() -> Path:
    """``$PERFTUNE_MODEL`` if set, else the runtime model in :func:`home`'s ``models/``."""
    return Path(os.environ.get("PERFTUNE_MODEL") or home() / "models" / RUNTIME_MODEL_NAME)


class Settings(BaseSettings):
    """``PERFTUNE_DB``, ``PERFTUNE_MODEL``, ``PERFTUNE_TOKEN``, ... (flags of `perftune serve`
    set the same variables)."""

    model_config = SettingsConfigDict(env_prefix="PERFTUNE_", extra="ignore")

    db: Path = Field(default_factory=default_db_path, description="the store (built if absent)")
    model: Path = Field(default_factory=default_model_path,
                        description="the runtime model (trained if absent)")
    token: SecretStr | None = Field(default=None, description="write token (unset: no writes)")
    read_token: SecretStr | None = Field(default=None, description="if set, reads need it too")
    # The service's limits (docs/security.md): what one request, or all of them together, may
    # cost in bytes, model runs and memory.
    max_batch: int = Field(default=256, ge=1, description="most items per request")
    max_body_bytes: int = Field(default=1_000_000, ge=1024,
                                description="largest request body, counted as it is read")
    max_choices: int = Field(default=2048, ge=1, description="most choices one request asks "
                             "for: the sum over its problems of top_k + 1")
    max_model_problems: int = Field(default=64, ge=1, description="most problems in one "
                                    "request that need the model (not stored, not cached)")
    model_workers: int = Field(default_factory=lambda: max(1, (os.cpu_count() or 2) // 2),
                               ge=1, description="requests computing answers at once (each "
                               "uses about a core); default half the cores")
    model_queue: int = Field(default=8, ge=0, description="requests that may wait for a "
                             "worker; more are answered 503 with Retry-After")
    model_wait_s: float = Field(default=10.0, gt=0, description="longest wait for a worker "
                                "before a 503")
    job_lease_s: float = Field(default=120.0, gt=0, description="a running tune job whose "
                               "worker sends no heartbeat for this long is queued again")
    job_budget: int = Field(default=16, ge=1, le=256, description="measurements per tune job "
                            "unless the request says")
    max_open_jobs: int = Field(default=1000, ge=1, description="most queued and running tune "
                               "jobs; more are refused with 503")
    calibration_problems: int = Field(default=10, ge=0, le=100, description="a GPU with fewer "
                                      "measured problems of a family and dtype than this gets "
                                      "tune jobs for problems spread over the sizes other GPUs "
                                      "measured, with its first job (0: never)")
    calibration_budget: int = Field(default=40, ge=1, le=256, description="measurements per "
                                    "calibration job")
    interpreter_devices: bool = Field(default=False, description="also answer for and queue "
                                      "jobs on Triton-interpreter devices of the store (for "
                                      "development and tests; their times are CPU times)")
    cache_bytes: int = Field(default=64 << 20, ge=0, description="memory for cached answers "
                             "(JSON bytes; least recently used dropped first)")
