"""What a request may cost the service: body bytes as read, the echo of a 422, non-finite
numbers, the model work of a batch, busy workers, /healthz under load, the answer cache's
bytes and generations. Over real HTTP against `perftune serve` where the server matters."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from perftune.model.runtime import Predictor
from perftune.service.recommend import Knowledge, recommend
from perftune.service.schemas import ProblemQuery
from tests.test_service import H100, TOKEN, Server, start_server

WORKERS, QUEUE = 1, 1  # the server below: one request computes, one more may wait


@pytest.fixture(scope="module")
def server(shipped: Path, model_file: Path, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Server]:
    work = tmp_path_factory.mktemp("limits")
    db = work / "served.duckdb"
    shutil.copy(shipped, db)
    running = start_server(db, model_file, work / "serve.log", model_workers=str(WORKERS),
                           model_queue=str(QUEUE))
    yield running
    running.process.terminate()
    running.process.wait(30)


def _new_problems(count: int, top_k: int, offset: int) -> list[dict[str, object]]:
    """Problems the store does not hold (odd sizes), each different."""
    return [{"device": H100, "m": 101 + offset + i, "n": 4099, "k": 3001, "top_k": top_k}
            for i in range(count)]


def test_a_chunked_body_over_the_limit_is_refused_as_it_is_read(server: Server) -> None:
    """No Content-Length to go by: 30 MB sent in chunks gets a short 413, fast, and the
    server stops reading at the limit (1 MB by default)."""
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        yield b'{"problems": [{"device": "'
        for _ in range(300):
            sent += 100_000
            yield b"x" * 100_000
        yield b'", "m": 1, "n": 1, "k": 1}]}'

    started = time.monotonic()
    response = httpx.post(server.url + "/v1/recommendations", content=chunks(),
                          headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == 413
    assert "1000000 bytes" in response.json()["detail"]
    assert len(response.content) < 500
    assert time.monotonic() - started < 20
    assert server.get("/healthz").status_code == 200


def test_a_422_never_echoes_large_input(server: Server) -> None:
    for bad in ({"problems": [{"device": "x" * 500_000, "m": 1, "n": 1, "k": 1}]},
                {"problems": [{"device": H100, "m": 1, "n": 1, "k": 1, "y" * 400_000: 1}]},
                {"problems": [{"device": H100, "m": "9" * 300_000, "n": 1, "k": 1}]}):
        response = server.post("/v1/recommendations", bad, token=None)
        assert response.status_code == 422
        assert len(response.content) < 2_000, response.content[:300]
    many = {"problems": [{"device": H100, "m": "many", "n": 1, "k": 1}] * 200}
    response = server.post("/v1/recommendations", many, token=None)
    assert response.status_code == 422 and len(response.content) < 10_000
    assert "more errors not listed" in response.text


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v1/recommendations", b'{"problems": [{"device": "%s", "m": NaN, "n": 64, "k": 64}]}',
     "m"),
    ("/v1/recommendations",
     b'{"problems": [{"device": "%s", "m": 64, "n": 64, "k": 64, "top_k": Infinity}]}',
     "top_k"),
    ("/v1/measurements", b'{"measurements": [{"device": "%s", "dataflow": "cublas", "dtype": '
     b'"fp16", "m": 64, "n": 64, "k": 64, "runtime_ms": NaN}]}', "runtime_ms"),
    ("/v1/measurements", b'{"measurements": [{"device": "%s", "dataflow": "cublas", "dtype": '
     b'"fp16", "m": 64, "n": 64, "k": 64, "runtime_ms": 0.02, "energy_per_call_j": '
     b'Infinity}]}', "energy_per_call_j"),
    ("/v1/measurements", b'{"measurements": [{"device": "%s", "dataflow": "cublas", "dtype": '
     b'"fp16", "m": 64, "n": 64, "k": 64, "runtime_ms": 0.02, "avg_power_w": -Infinity}]}',
     "avg_power_w"),
])
def test_non_finite_numbers_are_a_422_naming_the_field(server: Server, path: str, body: bytes,
                                                       field: str) -> None:
    """Python's JSON parser takes NaN and Infinity; they used to reach the 422's echo, which
    could not be rendered (HTTP 500)."""
    response = httpx.post(server.url + path, content=body % H100.encode(), timeout=30,
                          headers={"content-type": "application/json",
                                   "Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 422, response.text
    assert [field] == [e["loc"][-1] for e in response.json()["detail"]]


def test_a_batch_may_not_ask_for_unbounded_model_work(server: Server) -> None:
    started = time.monotonic()
    heavy = server.post("/v1/recommendations", {"problems": _new_problems(256, 50, 0)},
                        token=None)
    assert heavy.status_code == 413 and "top_k" in heavy.json()["detail"]
    modelled = server.post("/v1/recommendations", {"problems": _new_problems(65, 3, 0)},
                           token=None)
    assert modelled.status_code == 413 and "need the model" in modelled.json()["detail"]
    assert time.monotonic() - started < 5  # refused before any model run


def test_busy_workers_answer_503_with_retry_after_and_healthz_stays_quick(
        server: Server) -> None:
    """Six batches of 64 new problems at once: one computes, one waits, the other four are
    refused at once (503, Retry-After); /healthz answers quickly all along."""
    bodies = [{"problems": _new_problems(64, 3, 1000 + 100 * i)} for i in range(6)]
    health: list[float] = []

    async def load() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            batches = [asyncio.ensure_future(client.post("/v1/recommendations", json=body))
                       for body in bodies]
            while not all(b.done() for b in batches) and len(health) < 2_000:
                started = time.perf_counter()
                assert (await client.get("/healthz")).status_code == 200
                health.append(time.perf_counter() - started)
                await asyncio.sleep(0.02)
            return list(await asyncio.gather(*batches))

    answers = asyncio.run(load())
    codes = sorted(a.status_code for a in answers)
    assert codes == [200] * (WORKERS + QUEUE) + [503] * (6 - WORKERS - QUEUE)
    busy = [a for a in answers if a.status_code == 503]
    assert all(1 <= int(a.headers["Retry-After"]) <= 60 for a in busy)
    assert "retry in" in busy[0].json()["detail"]
    assert len(health) >= 5 and max(health) < 1.0
    done = next(a for a in answers if a.status_code == 200)
    assert [r["source"] for r in done.json()["recommendations"]] == ["model"] * 64


def test_the_answer_cache_is_bounded_by_its_bytes(shipped: Path, model_file: Path) -> None:
    from perftune.service.recommend import recommend_json

    bound = 150_000
    knowledge = Knowledge.load(shipped, Predictor.load(model_file), cache_bytes=bound)
    queries = [ProblemQuery.model_validate(q) for q in _new_problems(30, 50, 0)]
    sizes = [len(recommend_json(knowledge, q)) for q in queries]
    assert sum(sizes) > 2 * bound  # ~14 KB an answer: most of them could not stay
    assert 0 < knowledge.cache.bytes <= bound
    assert 0 < len(knowledge.cache) < len(queries)
    assert knowledge.cached(queries[-1]) is not None  # the least recently used went first
    assert knowledge.cached(queries[0]) is None


class _Paused(Predictor):
    """The real predictor, stopping after each ranking until let go."""

    ranked: threading.Event
    go_on: threading.Event

    def rank_problem(self, *args: Any, **kwargs: Any) -> Any:
        result = super().rank_problem(*args, **kwargs)
        self.ranked.set()
        assert self.go_on.wait(60)
        return result


def test_an_answer_computed_across_an_ingest_is_not_cached(
        shipped: Path, model_file: Path, tmp_path: Path) -> None:
    """A model answer that started before an ingest of its problem and finished after it
    must not be kept: the next query answers from the ingested row."""
    from perftune.service.ingest import ingest
    from perftune.service.schemas import MeasurementCreate

    db = tmp_path / "served.duckdb"
    shutil.copy(shipped, db)
    loaded = Predictor.load(model_file)
    predictor = _Paused(loaded.model, loaded.meta, loaded.energy_models)
    predictor.ranked, predictor.go_on = threading.Event(), threading.Event()
    knowledge = Knowledge.load(db, predictor)
    query = ProblemQuery.model_validate({"device": H100, "m": 77, "n": 333, "k": 999})
    answers: list[Any] = []
    racing = threading.Thread(target=lambda: answers.append(recommend(knowledge, query)))
    racing.start()
    assert predictor.ranked.wait(60)
    measurement = MeasurementCreate.model_validate({
        "device": H100, "dataflow": "cublas", "dtype": "fp16", "m": 77, "n": 333, "k": 999,
        "runtime_ms": 0.0123})
    assert ingest(knowledge, [measurement]) == 1
    predictor.go_on.set()
    racing.join(60)
    assert answers[0].source == "model"  # what was known when it started
    after = recommend(knowledge, query)
    assert after.source == "client" and after.best.runtime_ms == 0.0123
