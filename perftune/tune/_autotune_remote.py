"""The ``autotune`` decorator's records kept by a perftune service (``PERFTUNE_URL``, with
``PERFTUNE_TOKEN``), so that every process and machine using the service shares what any of
them measured: ``GET`` and ``POST /v1/autotune/records``. A service that cannot be reached, or
refuses, leaves the decorator on its local store, with one warning."""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from perftune.tune._autotune_store import AutotuneRecords, KernelIdentity

TIMEOUT_S = 10.0


class RemoteAutotuneRecords:
    """:class:`AutotuneRecords`' interface over HTTP, ``local`` taking over on failure."""

    def __init__(self, url: str, token: str | None, identity: KernelIdentity,
                 local: AutotuneRecords):
        self.url = url.rstrip("/")
        self.token = token
        self.identity = identity
        self.local = local
        self.remote = True
        self.reads = 0
        self.writes = 0

    @property
    def local_only(self) -> bool:
        return not self.remote and self.local.local_only

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def _give_up(self, exc: BaseException) -> None:
        warnings.warn(f"perftune autotune: the service at {self.url} is unavailable "
                      f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''});"
                      f" using the local store for {self.identity.kernel}",
                      RuntimeWarning, stacklevel=4)
        self.remote = False

    def load(self) -> tuple[dict[str, dict[str, Any]], pd.DataFrame]:
        if not self.remote:
            return self.local.load()
        import httpx

        try:
            answer = httpx.get(f"{self.url}/v1/autotune/records", params=self.identity.fields,
                               headers=self._headers(), timeout=TIMEOUT_S)
            answer.raise_for_status()
            body = answer.json()
        except (httpx.HTTPError, ValueError) as exc:
            self._give_up(exc)
            return self.local.load()
        self.reads += 1
        return ({row["key"]: row for row in body["choices"]},
                pd.DataFrame(body["measurements"]))

    def record(self, measurements: Sequence[Mapping[str, Any]], choice: Mapping[str, Any]
               ) -> dict[str, Any] | None:
        if not self.remote:
            return self.local.record(measurements, choice)
        import httpx

        body = {**self.identity.fields, "measurements": [_plain(m) for m in measurements],
                "choice": _plain(choice)}
        try:
            answer = httpx.post(f"{self.url}/v1/autotune/records", json=body,
                                headers=self._headers(), timeout=TIMEOUT_S)
            answer.raise_for_status()
            stored = answer.json()["choice"]
        except (httpx.HTTPError, ValueError, KeyError) as exc:
            self._give_up(exc)
            return self.local.record(measurements, choice)
        self.writes += 1
        return dict(stored) if stored else None


def _plain(row: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-ready: NaN and infinities as null."""
    def value(v: Any) -> Any:
        return None if isinstance(v, float) and not math.isfinite(v) else v

    return {k: value(v) for k, v in json.loads(json.dumps(dict(row), default=str)).items()}


def records_for(db: Any, identity: KernelIdentity) -> AutotuneRecords | RemoteAutotuneRecords:
    """The service's records when ``PERFTUNE_URL`` is set and no store is named, else the
    local store's."""
    local = AutotuneRecords(db, identity)
    url = os.environ.get("PERFTUNE_URL", "").strip()
    if url and db is None:
        return RemoteAutotuneRecords(url, os.environ.get("PERFTUNE_TOKEN") or None, identity,
                                     local)
    return local
