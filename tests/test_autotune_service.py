"""The autotune decorator's records shared through a perftune service (PERFTUNE_URL): over real
HTTP, `perftune serve` in its own process, kernels under the Triton interpreter in others."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from tests.test_autotune_kernels import SCRIPT, _env, _kernels
from tests.test_service import TOKEN, Server, serving_copy

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(shipped: Path, model_file: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Server]:
    with serving_copy(shipped, model_file, tmp_path_factory.mktemp("autotune-service")) as it:
        yield it


def _tune(kernels: Path, url: str, home: Path, *sizes: str
          ) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    """A process tuning with no store named: PERFTUNE_URL's service, PERFTUNE_DB as its local
    store."""
    env = {**_env(), "PERFTUNE_URL": url, "PERFTUNE_TOKEN": TOKEN,
           "PERFTUNE_HOME": str(home), "PERFTUNE_DB": str(home / "local.duckdb")}
    done = subprocess.run([sys.executable, str(SCRIPT), str(kernels), "-", "tune", *sizes],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1])), done


def test_a_second_process_elsewhere_tunes_nothing(server: Server, tmp_path: Path) -> None:
    kernels = _kernels(tmp_path / "k")
    first, _ = _tune(kernels, server.url, tmp_path / "one", "40", "50")
    assert [c["benchmarked"] for c in first["calls"]] == [12, 12]
    assert first["writes"] == 2 and not first["local_only"]
    # another process, with another local store: every key is a lookup in the service
    second, run = _tune(kernels, server.url, tmp_path / "two", "40", "50")
    assert [c["benchmarked"] for c in second["calls"]] == [0, 0]
    assert all(c["correct"] for c in second["calls"])
    assert [c["best"] for c in second["calls"]] == [c["best"] for c in first["calls"]]
    assert "unavailable" not in run.stderr
    assert not (tmp_path / "one" / "local.duckdb").exists()  # nothing went to a local store
    # the service's store holds them, and answers them over GET
    con = duckdb.connect(str(server.db), read_only=True)
    try:
        identity = con.execute("SELECT kernel, source_hash, device_id, software_key, count(*) "
                               "FROM autotune_choices GROUP BY ALL").fetchall()
    finally:
        con.close()
    assert len(identity) == 1 and identity[0][4] == 2
    kernel, source, device, software, _ = identity[0]
    records = server.get("/v1/autotune/records", kernel=kernel, source_hash=source,
                         device_id=device, software_key=software).json()
    assert len(records["choices"]) == 2 and len(records["measurements"]) == 24


def test_an_unreachable_service_leaves_the_local_store_with_one_warning(tmp_path: Path
                                                                          ) -> None:
    kernels = _kernels(tmp_path / "k")
    summary, run = _tune(kernels, "http://127.0.0.1:9", tmp_path / "home", "40", "50")
    assert [c["benchmarked"] for c in summary["calls"]] == [12, 12]
    assert run.stderr.count("is unavailable") == 1, run.stderr
    con = duckdb.connect(str(tmp_path / "home" / "local.duckdb"), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM autotune_choices").fetchone() == (2,)
    finally:
        con.close()


def test_bad_records_are_refused_with_the_field_named(server: Server) -> None:
    body = {"kernel": "k", "source_hash": "not-hex", "device_id": "d", "software_key": "s",
            "measurements": [], "choice": {}}
    answer = server.post("/v1/autotune/records", body)
    assert answer.status_code == 422 and "source_hash" in answer.text
    unauthorised = server.post("/v1/autotune/records", body, token=None)
    assert unauthorised.status_code == 401
