"""schemathesis: property-based requests generated from the service's own OpenAPI schema.

Every documented operation, with generated valid and invalid inputs, must answer without a
server error, with a status the schema documents and a body that matches it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")

from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from pydantic import SecretStr  # noqa: E402

from perftune.service.app import create_app  # noqa: E402
from perftune.settings import Settings  # noqa: E402


@pytest.fixture(scope="module")
def app(shipped: Path, model_file: Path, tmp_path_factory: pytest.TempPathFactory
        ) -> Iterator[object]:
    db = tmp_path_factory.mktemp("schema") / "served.duckdb"
    shutil.copy(shipped, db)
    application = create_app(Settings(db=db, model=model_file, token=SecretStr("schema-token")))
    with TestClient(application):  # runs the lifespan: the store and model are loaded
        yield application


def test_every_operation_honours_its_schema(app: object) -> None:
    # Schema-valid input may still be refused with a 422: a problem with an operand over 2^31
    # elements (a rule across m, n and k that OpenAPI cannot state), or client figures faster
    # than the device can run. Every other check stands.
    excluded = [schemathesis.checks.positive_data_acceptance]
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            case.call_and_validate(excluded_checks=excluded)

        check()


def test_a_read_token_closes_reads(shipped: Path, model_file: Path, tmp_path: Path) -> None:
    db = tmp_path / "served.duckdb"
    shutil.copy(shipped, db)
    application = create_app(Settings(db=db, model=model_file, read_token=SecretStr("reader")))
    with TestClient(application) as client:
        assert client.get("/v1/devices").status_code == 401
        assert client.get("/v1/devices", headers={"Authorization": "Bearer nope"}
                          ).status_code == 401
        assert client.get("/v1/devices", headers={"Authorization": "Bearer reader"}
                          ).status_code == 200
        # no write token configured: writes are refused outright
        assert client.post("/v1/measurements", json={"measurements": []},
                           headers={"Authorization": "Bearer reader"}).status_code == 403


def test_loaded_knowledge_is_kept_out_of_the_collector(shipped: Path, model_file: Path,
                                                       tmp_path: Path) -> None:
    """A full collection walking the loaded store rows and models was the p99 of batch
    requests (~300 ms); the service freezes them at start-up and lets go at shutdown."""
    import gc

    db = tmp_path / "served.duckdb"
    shutil.copy(shipped, db)
    before = gc.get_freeze_count()
    with TestClient(create_app(Settings(db=db, model=model_file))) as client:
        assert client.get("/v1/devices").status_code == 200
        assert gc.get_freeze_count() > before + 100_000
    assert gc.get_freeze_count() == 0
