"""The service's settings: one pydantic-settings class, from the environment (PERFTUNE_*) and
the `perftune serve` flags, injected into the app (never built at import time)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from perfmodel.runtime import DEFAULT_MODEL
from store.db import DEFAULT_DB


class Settings(BaseSettings):
    """``PERFTUNE_DB``, ``PERFTUNE_MODEL``, ``PERFTUNE_TOKEN``, ... or the same as flags."""

    model_config = SettingsConfigDict(env_prefix="PERFTUNE_", extra="ignore")

    db: Path = Field(default=DEFAULT_DB, description="the store (built if absent)")
    model: Path = Field(default=DEFAULT_MODEL, description="the runtime model (trained if absent)")
    token: SecretStr | None = Field(default=None, description="write token (unset: no writes)")
    read_token: SecretStr | None = Field(default=None, description="if set, reads need it too")
    max_batch: int = Field(default=256, ge=1, description="most items per request")
    max_body_bytes: int = Field(default=4_000_000, ge=1024, description="largest request body")
