"""Measuring on demand: what a tune job adds to a model answer, and whether the service's
confidence tells when one is needed: by replay of the shipped GPU measurements on CPU, or
live on a GPU through the service and a worker.

    python -m benchmarks.measure_on_demand [--budget 16] [--trees 60] [--seed 0]
    python -m benchmarks.measure_on_demand --live [--problems 6] [--budget 10] [--rounds 3]
    python -m benchmarks.measure_on_demand --live --interpret [--budget 3] [--results FILE]

Replay (the default, CPU only). A GEMM runtime forest is trained on the shipped data with the
held-out problems left out (as `perftune fit` does); then, on the held-out GEMM problems of
every GPU that measured them,
- ``regret_zero_shot``: geomean over problems of best measured time / measured time of the
  model's top-1 config across dataflows (1 is perfect; as benchmarks/families.py);
- ``regret_after_job``: the same for the model-guided tuner's answer after a tune job's
  budget of measurements (the service's default job budget unless ``--budget``), replayed
  from the recorded ones; ``regret_at_10`` with 10;
- confidence: the answer the service would give from its model for the problem were it not
  measured (the top of :meth:`Predictor.rank_problem` over the store's configs) and its
  confidence, from the service's own :func:`model_spread`, :func:`nearest_distance`,
  :func:`model_margin` and :func:`model_confidence`; the distance is taken to the device's
  problems the model was trained on (the held-out problems count as not measured). Per
  confidence level: how many answers, how many can be judged (at least 20 configs measured,
  the answer's among them), and the share of those within 2% of the best;
- ``calibration``: the same answers for the *training* problems by 4-fold cross-validation,
  and, over a grid of (margin, distance) bounds, the share of those a rule would call high
  that are within 2%: the rule the service uses is the one calling the most high whose
  share's 95% lower bound is at least 0.95 (``service_rule_is_chosen`` checks it);
- ``cross_device_mape_after_10``: the runtime MAPE on the H200's held-out GEMM rows when the
  H200 is a GPU new to the store with 10 problems measured by its calibration jobs (the
  problems the service would choose, 40 configs each), the model corrected for it as
  `perftune fit` does; ``cross_device_mape_after_0`` with no H200 row at all, and in
  ``cross_device`` the alternatives (10 random problems; the H200 rows training the forest
  like any GPU's).
Saves benchmarks/results/measure_on_demand.json (a ``live`` key already there is kept).

Live (``--live``, on a CUDA GPU; refused without one). The product path, end to end:
1. a store is built from the shipped data; the first ``--problems`` held-out GEMM problems
   that it holds swept over the whole space on this GPU are taken, each with its best stored
   ok measurement (``best``), and this GPU's rows of them are deleted from it, so that the
   service has not measured them; the runtime model (with the power and energy models) is
   fitted on it as `perftune fit` does (held-out problems are left out of training anyway);
2. `perftune serve` runs on it (a subprocess over real HTTP, with a write token); each
   problem's recommendation is asked with ``measure=true``: its model answer is
   ``zero_shot``; where that queued no job (a high-confidence answer) one is queued with
   ``POST /v1/tune`` (``job_via`` says which);
3. `perftune worker --service URL --once` runs on this GPU (into a fresh local store holding
   the GPU's calibration, with the fitted model) until no job is queued, each run timed
   (``job_seconds``); every job is polled to done, and the recommendation asked again must
   answer ``source: measured`` (``after_job``; ``answered_measured`` counts those);
4. zero_shot, after_job and best are checked against the reference on fresh inputs, then
   re-timed in this process, interleaved over ``--rounds`` rounds (triton.testing.do_bench's
   median, L2 flushed; a config's time is the median of its rounds);
   ``regret_zero_shot_live`` and ``regret_after_job_live`` are the geomeans of best_ms /
   zero_shot_ms and best_ms / after_job_ms (1: as fast as the best swept config).
It writes the key ``live`` of the results file, every other key kept, and exits 1 if an
answer was not measured after its job or a config failed its check. With ``--interpret`` it
is a CPU smoke run under the Triton interpreter instead: two tiny fp32 problems that no sweep
holds (no ``best``, and the service has no model answer for the interpreter: its job comes
from ``POST /v1/tune``), random search, wall-clock times; nothing is written unless
``--results`` is given.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from benchmarks._shipped import fresh_store, replay_header
from benchmarks._timing import Timer, side_by_side_timer
from perftune.collect.device import GPU, identify, limits_of, select_mode, torch_device
from perftune.collect.families import KernelFamily, load_family
from perftune.collect.problems import Problem, spread_out
from perftune.collect.sweep import device_record
from perftune.errors import PerftuneInputError
from perftune.model.features import family_features
from perftune.model.metrics import PROBLEM, geomean, regret
from perftune.model.persist import save_model
from perftune.model.runtime import (
    ENERGY_TARGETS,
    Catalog,
    Predictor,
    fit_model,
    fit_rows,
    model_path,
    training_rows,
)
from perftune.service.recommend import (
    HIGH_DISTANCE,
    HIGH_MARGIN,
    model_confidence,
    model_margin,
    model_spread,
    nearest_distance,
    swept_whole,
)
from perftune.settings import HELDOUT_FILE, RUNTIME_MODEL_NAME, Settings
from perftune.store.dataset import listed_problems
from perftune.store.db import Store
from perftune.store.queries import has_trusted_energy
from perftune.tune.replay import ReplayBackend
from perftune.tune.search import tune

RESULTS = Path(__file__).resolve().parent / "results"
FAMILY = "gemm"
H100, H200 = "nvidia-h100-80gb-hbm3", "nvidia-h200"
WITHIN = 0.02  # an answer within 2% of the best measured time is right
LEVELS = ("high", "medium", "low")


def _problem(device: str, shape: str, dtype: str) -> Problem:
    sizes = {k: int(v) for k, v in (pair.split("=") for pair in shape.split(","))}
    return Problem.of(str(dtype), **sizes).on(str(device))


def _tuned(store: Store, predictor: Predictor, held: pd.DataFrame, budget: int
           ) -> list[float]:
    """Per held-out problem: best measured time / the tuner's answer after ``budget``."""
    ratios = []
    for (device, shape, dtype), group in held.groupby(PROBLEM):
        result = tune(_problem(device, shape, dtype), ReplayBackend(store, family=FAMILY),
                      budget=budget, method="model", predictor=predictor, store=store)
        answer = result.best.runtime_ms if result.best else math.inf
        ratios.append(group["runtime_ms"].min() / answer)
    return ratios


JUDGED_CONFIGS = 20  # a problem's best is known well enough to judge an answer by


def answer_record(predictor: Predictor, catalog: Catalog, group: pd.DataFrame,
                  known: dict[tuple[str, str], set[str]]) -> dict[str, Any]:
    """The service's model answer for the problem of ``group`` (its measured rows), with the
    confidence the service gives it (its own :func:`model_spread`, :func:`nearest_distance`
    to ``known`` shapes, :func:`model_margin` and :func:`model_confidence`), and how its
    measured time compares with the best measured (None if the answer was not measured)."""
    device, shape, dtype = (str(group[c].iloc[0]) for c in PROBLEM)
    ranked = predictor.rank_problem(catalog, _problem(device, shape, dtype))
    best = ranked.iloc[0]
    spread = model_spread(float(best["predicted_ms"]), float(best.get("low_ms", math.nan)),
                          float(best.get("high_ms", math.nan)))
    distance = nearest_distance(shape, known.get((device, dtype), ()))
    margin = model_margin(ranked["predicted_ms"].to_numpy(float))
    hit = group[(group["dataflow"] == best["dataflow"]) & (group["config"] == best["config"])]
    ratio = float(group["runtime_ms"].min() / hit["runtime_ms"].min()) if len(hit) else None
    return {"device": device, "problem": shape, "dtype": dtype,
            "confidence": model_confidence(bool(best["trained_on_device"]), spread, distance,
                                           margin),
            "trained_on_device": bool(best["trained_on_device"]), "spread": round(spread, 4),
            "distance": round(distance, 4), "margin": round(min(margin, 99.0), 4),
            "answer": str(best["dataflow"]), "configs_measured": int(group["config"].nunique()),
            "judged": int(group["config"].nunique()) >= JUDGED_CONFIGS and ratio is not None,
            "best_over_answer": ratio}


def _within(record: dict[str, Any]) -> bool:
    return bool(record["best_over_answer"] >= 1 / (1 + WITHIN))


def _known(rows: pd.DataFrame) -> dict[tuple[str, str], set[str]]:
    return {(str(d), str(t)): set(g["shape"]) for (d, t), g in rows.groupby(["device_id",
                                                                              "dtype"])}


def confidence_figures(store: Store, predictor: Predictor, held: pd.DataFrame,
                       train: pd.DataFrame) -> dict[str, Any]:
    """The service's model answer and its confidence for every held-out problem, and, per
    confidence level, the share of judged answers (a problem with at least
    :data:`JUDGED_CONFIGS` configs measured, the answer's among them) within :data:`WITHIN` of
    the best."""
    catalog = Catalog.of(store, FAMILY)
    known = _known(train)
    per_problem = [answer_record(predictor, catalog, group, known)
                   for _, group in held.groupby(PROBLEM)]
    figures: dict[str, Any] = {"counts": {}, "judged": {}, "within_2pct": {}}
    for level in LEVELS:
        rows = [p for p in per_problem if p["confidence"] == level]
        judged = [p for p in rows if p["judged"]]
        figures["counts"][level] = len(rows)
        figures["judged"][level] = len(judged)
        figures["within_2pct"][level] = (float(np.mean([_within(p) for p in judged]))
                                         if judged else None)
    figures["per_problem"] = per_problem
    return figures


MARGINS = (0.03, 0.05, 0.08, 0.1, 0.12, 0.15, 0.2)
DISTANCES = (0.5, 1.0, 1.5, 2.0, 3.0)


def calibrate_confidence(train: pd.DataFrame, catalog: Catalog, trees: int, *, folds: int = 4,
                         seed: int = 0, goal: float = 0.95) -> dict[str, Any]:
    """Held-in calibration of the high-confidence rule: ``folds``-fold cross-validation over
    the training problems (a forest fitted on the other folds answers each fold's problems,
    the distance taken to the other folds' problems); for each (margin, distance) bound of the
    grid, the judged answers it would call high and the share within 2% of the best. The rule
    chosen is the one calling the most answers high whose share's 95% (Wilson) lower bound is
    at least ``goal``."""
    kernel = load_family(FAMILY)
    ids = train["device_id"] + "|" + train["shape"] + "|" + train["dtype"]
    problems = ids.unique()
    fold_of = dict(zip(problems, np.random.default_rng(seed).integers(0, folds, len(problems)),
                       strict=True))
    fold = ids.map(fold_of).to_numpy()
    records: list[dict[str, Any]] = []
    for k in range(folds):
        trained, answer_rows = train[fold != k], train[fold == k]
        judged = answer_rows.groupby(PROBLEM).filter(
            lambda g: g["config"].nunique() >= JUDGED_CONFIGS)
        if judged.empty:
            continue
        predictor = Predictor(*_fit(kernel, trained, trees))
        known = _known(trained)
        records += [r for _, g in judged.groupby(PROBLEM)
                    if (r := answer_record(predictor, catalog, g, known))["judged"]]
    grid: list[dict[str, Any]] = []
    for margin in MARGINS:
        for distance in DISTANCES:
            high = [r for r in records if r["trained_on_device"] and r["margin"] >= margin
                    and r["distance"] <= distance]
            good = sum(_within(r) for r in high)
            grid.append({"margin": margin, "distance": distance, "high": len(high),
                         "within_2pct": good / len(high) if high else None,
                         "lower_bound": _wilson_lower(good, len(high))})
    passing = [g for g in grid if g["lower_bound"] >= goal]
    # the most answers called high; of rules calling as many, the strictest
    chosen = max(passing, key=lambda g: (g["high"], g["margin"], -g["distance"]),
                 default=None)
    return {"folds": folds, "seed": seed, "judged_answers": len(records),
            "within_2pct_all": (float(np.mean([_within(r) for r in records]))
                                if records else None),
            "chosen": chosen, "service_rule": {"margin": HIGH_MARGIN,
                                               "distance": HIGH_DISTANCE},
            "service_rule_is_chosen": bool(chosen and chosen["margin"] == HIGH_MARGIN
                                           and chosen["distance"] == HIGH_DISTANCE),
            "grid": grid}


def _fit(kernel: Any, rows: pd.DataFrame, trees: int) -> tuple[Any, dict[str, Any]]:
    """A runtime forest on ``rows`` as `perftune fit --adapt-below 0` fits one, and the
    metadata a :class:`Predictor` reads."""
    model, _ = fit_rows(kernel, rows, adapt_below=0, n_estimators=trees, n_jobs=1)
    return model, {"devices": sorted(set(rows["device_id"])), "family": FAMILY}


def _wilson_lower(successes: int, n: int, z: float = 1.96) -> float:
    """The lower end of the Wilson score interval of a share (0 for no trials)."""
    if n == 0:
        return 0.0
    share = successes / n
    centre = share + z * z / (2 * n)
    half = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n)


def cross_device(store: Store, trees: int, seed: int, draws: tuple[int, ...]
                 ) -> dict[str, Any]:
    """The H200's held-out runtime MAPE after ``n`` H200 problems, as a GPU new to the store:

    - ``mape``: a forest trained on the H100's training rows plus those of ``n`` H200 training
      problems drawn with ``seed``, for each ``n`` of ``draws`` (the H200 trains the forest
      like any GPU: ``perftune fit --adapt-below 0``);
    - ``adapted``: what `perftune fit` does for a GPU with few problems: a forest on the H100
      alone, corrected for the H200 from its rows (:meth:`RuntimeForest.adapt`), with the 10
      random problems and with 10 calibration problems as the service chooses them
      (:func:`spread_out` over the sizes measured; here among the H200 training problems
      swept over the whole space, so that replay has their rows, with 40 seeded configs each
      for a calibration job's measurements)."""
    kernel = load_family(FAMILY)
    h100 = training_rows(store, family=FAMILY, devices=[H100])
    h200 = training_rows(store, family=FAMILY, devices=[H200])
    target = training_rows(store, family=FAMILY, devices=[H200], heldout=True)
    problems = sorted(set(zip(h200["shape"], h200["dtype"], strict=True)))
    order = np.random.default_rng(seed).permutation(len(problems))
    truth = target["runtime_ms"].to_numpy(float)
    target_features = family_features(kernel, target)
    out: dict[str, Any] = {"h200_training_problems": len(problems),
                           "h200_heldout_problems": int(target.groupby(PROBLEM).ngroups),
                           "h200_heldout_rows": len(target), "seed": seed, "mape": {},
                           "drawn": {}}

    def mape(model: Any) -> float:
        guess = model.predict(target_features, target["device_id"])
        return float(np.mean(np.abs(guess - truth) / truth))

    for n in draws:
        drawn = {problems[i] for i in order[:n]}
        out["mape"][str(n)] = mape(_fit(kernel, pd.concat([h100, _rows_of(h200, drawn)],
                                                          ignore_index=True), trees)[0])
        out["drawn"][str(n)] = sorted(f"{s} {d}" for s, d in drawn)
    calibration = _calibration_problems(h200, 10)
    measured = (_rows_of(h200, calibration).sample(frac=1.0, random_state=seed)
                .groupby(["shape", "dtype"]).head(40))
    base = _fit(kernel, h100, trees)[0]

    def corrected(rows: pd.DataFrame) -> float:  # each correction replaces the last
        return mape(base.adapt(family_features(kernel, rows), rows["runtime_ms"],
                               rows["device_id"]))

    out["adapted"] = {
        "calibration_10": corrected(measured),
        "random_10": corrected(_rows_of(h200, {problems[i] for i in order[:10]})),
        "calibration_problems": sorted(f"{s} {d}" for s, d in calibration),
        "calibration_rows": len(measured),
        "settings_on_training_problems": _adapter_settings(
            kernel, base, measured,
            h200[[key not in calibration for key in zip(h200["shape"], h200["dtype"],
                                                        strict=True)]])}
    return out


def _adapter_settings(kernel: Any, base: Any, measured: pd.DataFrame, others: pd.DataFrame
                      ) -> dict[str, float]:
    """The MAPE on the H200's other *training* problems of corrections fitted on ``measured``
    with each setting (leaf size, share of features per split): how
    :meth:`RuntimeForest.adapt`'s settings were chosen, without the held-out problems."""
    from sklearn.ensemble import RandomForestRegressor

    x, x_other = family_features(kernel, measured), family_features(kernel, others)
    error = np.log(measured["runtime_ms"].to_numpy(float)) - np.log(base.predict(x))
    truth, guess = others["runtime_ms"].to_numpy(float), base.predict(x_other)
    scores = {"none": float(np.mean(np.abs(guess - truth) / truth))}
    for leaf in (1, 2, 5, 10):
        for share in (1.0, 0.5):
            forest = RandomForestRegressor(n_estimators=100, min_samples_leaf=leaf,
                                           max_features=share, random_state=0, n_jobs=1)
            fixed = guess * np.exp(forest.fit(x.to_numpy(float), error)
                                   .predict(x_other.to_numpy(float)))
            scores[f"leaf {leaf}, features {share}"] = float(
                np.mean(np.abs(fixed - truth) / truth))
    return scores


def _rows_of(rows: pd.DataFrame, problems: set[tuple[str, str]]) -> pd.DataFrame:
    keys = zip(rows["shape"], rows["dtype"], strict=True)
    return rows[[key in problems for key in keys]]


def _calibration_problems(rows: pd.DataFrame, n: int, min_configs: int = 300
                          ) -> set[tuple[str, str]]:
    """The ``n`` problems :func:`spread_out` picks among those of ``rows`` swept over at least
    ``min_configs`` configs (a shape measured in both dtypes counts once, in its first)."""
    counts = rows.groupby(["shape", "dtype"])["config"].nunique()
    dtype_of: dict[str, str] = {}
    for (shape, dtype), count in counts.items():
        if count >= min_configs:
            dtype_of.setdefault(str(shape), str(dtype))
    return {(shape, dtype_of[shape]) for shape in spread_out(sorted(dtype_of), n)}


# -- live: the service, a worker and a re-timing on this machine's GPU ----------------------

LIVE_BUDGET, INTERPRET_BUDGET = 10, 3  # a job's measurements (about 15 s live on an H200)
MEASURE_TIMEOUT_S = 60  # the worker's limit on one measurement
TINY = ("m=16,n=32,k=64", "m=16,n=64,k=32")  # the interpreter's problems (fp32)
NAMES = ("zero_shot", "after_job", "best")


def say(text: str) -> None:
    print(f"measure_on_demand: {text}", file=sys.stderr, flush=True)


def _ok_rows(store: Store, problem: Problem) -> pd.DataFrame:
    return store.query(
        "SELECT dataflow, config, runtime_ms FROM measurements WHERE family = ? AND "
        "device_id = ? AND dtype = ? AND shape = ? AND status = 'ok' ORDER BY runtime_ms",
        [FAMILY, problem.device, problem.dtype, problem.shape])


def _best_of(rows: pd.DataFrame) -> dict[str, Any] | None:
    if rows.empty:
        return None
    best = rows.iloc[0]
    return {"dataflow": str(best["dataflow"]), "config": json.loads(best["config"]),
            "stored_ms": float(best["runtime_ms"]), "configs_measured": len(rows)}


def _swept_whole(rows: pd.DataFrame, problem: Problem, device: dict[str, Any]) -> bool:
    """Whether ``rows`` cover the problem's whole space, as the service tells it."""
    limits = limits_of({k: v for k, v in device.items() if not pd.isna(v)})
    return swept_whole(FAMILY, problem, limits, rows["dataflow"].to_numpy(),
                       rows["config"].to_numpy())


def live_problems(store: Store, device: str, count: int, interpret: bool
                  ) -> list[tuple[Problem, dict[str, Any] | None]]:
    """The first ``count`` held-out GEMM problems swept whole on ``device``, each with its best
    stored ok measurement (under the interpreter: the tiny problems, with none)."""
    listed = ([("fp32", shape) for shape in TINY] if interpret else
              [(dtype, shape) for family, dtype, shape in listed_problems(HELDOUT_FILE)
               if family == FAMILY])
    record = store.device(device) or {}
    chosen = []
    for dtype, shape in listed:
        problem = _problem(device, shape, dtype)
        rows = _ok_rows(store, problem)
        if interpret or _swept_whole(rows, problem, record):
            chosen.append((problem, _best_of(rows)))
    return chosen[:count]


def unmeasure(store: Store, problems: list[Problem]) -> int:
    """Delete the device's rows of ``problems``: the service has not measured them."""
    deleted = 0
    for p in problems:
        row = store.con.execute(
            "DELETE FROM measurements WHERE family = ? AND device_id = ? AND dtype = ? AND "
            "shape = ?", [FAMILY, p.device, p.dtype, p.shape]).fetchone()
        deleted += int(row[0]) if row else 0
    return deleted


def fit_models(db: Path, folder: Path, trees: int) -> Path:
    """The GEMM runtime model (``trees`` trees) and, where the store has energy rows, the power
    and energy models beside it, trained on ``db`` as `perftune fit` does; the runtime
    model's path."""
    path = folder / RUNTIME_MODEL_NAME
    with Store(db, read_only=True) as store:
        save_model(path, *fit_model(store, family=FAMILY, n_estimators=trees))
        if has_trusted_energy(store, FAMILY):
            for target in ENERGY_TARGETS:
                save_model(model_path(target, path),
                           *fit_model(store, family=FAMILY, target=target))
    return path


def worker_store(db: Path, path: Path, device: str) -> Path:
    """A fresh local store for the worker, holding only the device's row of ``db`` (its
    calibration, which the model-guided search reads)."""
    with Store(db, read_only=True) as served:
        row = served.query("SELECT * FROM devices WHERE device_id = ?", [device])
    with Store(path) as store:
        store.insert("devices", row)
    return path


def clean_env(interpret: bool, **settings: str) -> dict[str, str]:
    """This environment without PERFTUNE_* and TRITON_INTERPRET, with ``settings`` as
    PERFTUNE_<NAME> variables (and the interpreter when ``interpret``)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PERFTUNE_") and k != "TRITON_INTERPRET"}
    env.update({f"PERFTUNE_{name.upper()}": value for name, value in settings.items()})
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return env


@dataclass
class Service:
    """`perftune serve` in a subprocess, and an HTTP client of it with the write token."""

    url: str
    token: str
    process: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str, **params: Any) -> httpx.Response:
        return httpx.get(self.url + path, params=params, timeout=120)

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(self.url + path, json=body, timeout=120,
                          headers={"Authorization": f"Bearer {self.token}"})

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(_checked(self.get(f"/v1/jobs/{job_id}")).json())


def _checked(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        raise SystemExit(f"{response.request.method} {response.request.url}: "
                         f"{response.status_code} {response.text[:500]}")
    return response


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serving(db: Path, model: Path, log: Path, env: dict[str, str], token: str
            ) -> Iterator[Service]:
    """`perftune serve` on ``db`` with ``model`` on a free loopback port, stopped at the end."""
    port = _free_port()
    command = [sys.executable, "-m", "perftune", "serve", "--db", str(db), "--model",
               str(model), "--port", str(port)]
    with log.open("ab") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    service = Service(f"http://127.0.0.1:{port}", token, process, log)
    try:
        _wait_up(service, 300.0)
        yield service
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_up(service: Service, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise SystemExit(f"perftune serve exited: {service.log.read_text()[-2000:]}")
        try:
            if service.get("/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"perftune serve did not come up in {limit_s:.0f} s")


def ask(service: Service, problem: Problem, measure: bool) -> dict[str, Any]:
    """GET /v1/recommendation for ``problem``: the answer, or its status and detail."""
    response = service.get("/v1/recommendation", device=problem.device, dtype=problem.dtype,
                           measure=str(measure).lower(), **problem.sizes)
    if response.status_code != 200:
        return {"status": response.status_code, "detail": response.json().get("detail")}
    return {"status": 200, **response.json()}


def _pick(answer: dict[str, Any]) -> dict[str, Any] | None:
    """An answer's best dataflow and config, with its (predicted or measured) time."""
    if answer["status"] != 200:
        return None
    best = answer["best"]
    return {"dataflow": best["dataflow"], "config": best["config"],
            "answered_ms": best["runtime_ms"]}


def _shown(answer: dict[str, Any]) -> dict[str, Any]:
    keys = ("status", "detail", "source", "confidence", "spread", "distance", "bound", "job")
    return {k: answer[k] for k in keys if k in answer}


def queue_job(service: Service, problem: Problem, budget: int) -> dict[str, Any]:
    """The model answer asked with measure=true, and its tune job: the one it queued, else one
    queued with POST /v1/tune."""
    first = ask(service, problem, measure=True)
    job, via = first.get("job"), "recommendation"
    if job is None:
        body = {"family": FAMILY, "device": problem.device, "dtype": problem.dtype,
                "sizes": problem.sizes, "budget": budget}
        job, via = _checked(service.post("/v1/tune", body)).json(), "post_tune"
    say(f"{problem}: {first.get('source', first['status'])} answer, confidence "
        f"{first.get('confidence')}; job {job['id']} via {via}")
    return {"first_answer": _shown(first), "zero_shot": _pick(first), "job": job["id"],
            "job_via": via}


def run_worker(command: list[str], env: dict[str, str], limit_s: float) -> int:
    """One `perftune worker --once` (its notices on stderr); past ``limit_s`` it is stopped
    (SIGTERM gives its job back to the queue) and its exit code is returned all the same."""
    process = subprocess.Popen(command, env=env, stdout=sys.stderr)
    try:
        return process.wait(limit_s)
    except subprocess.TimeoutExpired:
        say(f"the worker ran past {limit_s:.0f} s: stopping it")
        process.terminate()
        try:
            return process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()


def run_jobs(service: Service, jobs: list[str], command: list[str], env: dict[str, str],
             limit_s: float) -> dict[str, float]:
    """Worker runs until none of ``jobs`` is queued; each job's run's seconds."""
    seconds: dict[str, float] = {}
    for _ in range(2 * len(jobs)):
        queued = [j for j in jobs if service.job(j)["status"] == "queued"]
        if not queued:
            break
        started = time.perf_counter()
        code = run_worker(command, env, limit_s)
        took = round(time.perf_counter() - started, 1)
        ran = [j for j in queued if service.job(j)["status"] != "queued"]
        say(f"worker run: {took} s, exit {code}, ran {', '.join(ran) or 'nothing'}")
        if not ran:
            break
        seconds[ran[0]] = took
    return seconds


def wait_done(service: Service, job_id: str, limit_s: float = 30.0) -> dict[str, Any]:
    """The job once done or failed (as it is after ``limit_s``)."""
    deadline = time.monotonic() + limit_s
    job = service.job(job_id)
    while job["status"] not in ("done", "failed") and time.monotonic() < deadline:
        time.sleep(0.5)
        job = service.job(job_id)
    return job


def _timer(gpu: bool) -> Timer:
    return side_by_side_timer(gpu, rep_ms=100)


ConfigKey = tuple[str, str]  # dataflow, config JSON


def _key(pick: dict[str, Any]) -> ConfigKey:
    return str(pick["dataflow"]), json.dumps(pick["config"], sort_keys=True)


def _checked_call(family: KernelFamily, problem: Problem, key: ConfigKey, inputs: Any,
                  reference: Any, gpu: bool) -> tuple[dict[str, Any], Callable[[], None] | None]:
    """The config's launch if it matches the reference (its check either way)."""
    import torch

    try:
        fn = family.launcher(problem, key[0], json.loads(key[1]), inputs)
        inputs["out"].fill_(float("nan"))
        fn()
        if gpu:
            torch.cuda.synchronize()
    except Exception as exc:  # a config that cannot run here: reported, not timed
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}, None
    error = float((inputs["out"].float() - reference).norm() / reference.norm())
    ok = error <= family.tolerance(problem.dtype)
    return {"ok": ok, "rel_error": error}, fn if ok else None


def retime(problem: Problem, picks: dict[str, dict[str, Any] | None], mode: str,
           timer: Timer, rounds: int, seed: int) -> dict[str, Any]:
    """Each pick checked against the reference on fresh inputs, then the distinct ones timed
    in ``rounds`` interleaved rounds: per pick its median time (None if its check failed),
    check and rounds' spread."""
    import torch

    gpu = mode == GPU
    family = load_family(FAMILY)
    inputs = family.make_inputs(problem, torch_device(mode), seed)
    reference = family.reference(problem, inputs)
    keys = {name: _key(pick) for name, pick in picks.items() if pick is not None}
    checks, calls = {}, {}
    for key in dict.fromkeys(keys.values()):
        checks[key], fn = _checked_call(family, problem, key, inputs, reference, gpu)
        if fn is not None:
            calls[key] = fn
    times: dict[ConfigKey, list[float]] = {key: [] for key in calls}
    for _ in range(rounds):
        for key, fn in calls.items():
            times[key].append(timer(fn))
    del inputs, reference, calls
    if gpu:
        torch.cuda.empty_cache()
    out: dict[str, Any] = {}
    for name, key in keys.items():
        t = times.get(key)
        out[name] = {"ms": statistics.median(t) if t else None, "check": checks[key],
                     "round_spread": (max(t) - min(t)) / statistics.median(t) if t else None}
    return out


def _ratio(entry: dict[str, Any], name: str) -> float | None:
    best, other = entry.get("best_ms"), entry.get(f"{name}_ms")
    return best / other if best and other else None


def _geomean_of(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return geomean(kept) if kept else None


def measure_on_demand(service: Service, problems: list[tuple[Problem, dict[str, Any] | None]],
                      budget: int, worker: list[str], env: dict[str, str],
                      limit_s: float) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Steps 2 and 3 of the live mode: per problem its entry, and each job's seconds."""
    entries = [{"problem": p.shape, "dtype": p.dtype, "best": best,
                **queue_job(service, p, budget)} for p, best in problems]
    seconds = run_jobs(service, [e["job"] for e in entries], worker, env, limit_s)
    for (problem, _), entry in zip(problems, entries, strict=True):
        job = wait_done(service, entry["job"])
        after = ask(service, problem, measure=False)
        entry.update(job_status=job["status"], job_result=job["result"],
                     job_error=job["error"], job_seconds=seconds.get(entry["job"]),
                     after_answer=_shown(after), after_job=_pick(after),
                     answered_measured=after.get("source") == "measured")
        say(f"{problem}: job {job['status']}; next answer {after.get('source', after['status'])}")
    return entries, seconds


def retime_all(problems: list[tuple[Problem, dict[str, Any] | None]],
               entries: list[dict[str, Any]], mode: str, rounds: int) -> None:
    """Step 4: each entry's picks re-timed side by side (``NAME_ms``, checks, ratios)."""
    timer = _timer(mode == GPU)
    for index, ((problem, _), entry) in enumerate(zip(problems, entries, strict=True)):
        say(f"{problem}: checking and re-timing {', '.join(n for n in NAMES if entry[n])}")
        timed = retime(problem, {name: entry[name] for name in NAMES}, mode, timer, rounds,
                       1000 + index)  # not the sweep's inputs
        for name, result in timed.items():
            entry[f"{name}_ms"] = result["ms"]
        entry["checks"] = {name: result["check"] for name, result in timed.items()}
        entry["round_spread"] = {name: result["round_spread"] for name, result in timed.items()}
        entry["best_over_zero_shot"] = _ratio(entry, "zero_shot")
        entry["best_over_after_job"] = _ratio(entry, "after_job")


def live_summary(args: argparse.Namespace, identity: dict[str, Any], mode: str, budget: int,
                 entries: list[dict[str, Any]], seconds: dict[str, float],
                 elapsed_s: float) -> dict[str, Any]:
    return {
        "device": identity["name"], "device_id": identity["device_id"], "mode": mode,
        "software": identity["software"], "date": dt.date.today().isoformat(),
        "command": " ".join(["python -m benchmarks.measure_on_demand", *sys.argv[1:]]),
        "timer": ("triton.testing.do_bench median (L2 flushed), median of rounds"
                  if mode == GPU else "wall clock under the Triton interpreter (not GPU times)"),
        "problems": [f"{e['problem']} {e['dtype']}" for e in entries], "budget": budget,
        "trees": args.trees, "rounds": args.rounds, "per_problem": entries,
        "regret_zero_shot_live": _geomean_of([e["best_over_zero_shot"] for e in entries]),
        "regret_after_job_live": _geomean_of([e["best_over_after_job"] for e in entries]),
        "answered_measured": sum(e["answered_measured"] for e in entries),
        "jobs_via": {via: sum(e["job_via"] == via for e in entries)
                     for via in ("recommendation", "post_tune")},
        "job_seconds": seconds,
        "checks_passed": all(c["ok"] for e in entries for c in e["checks"].values()),
        "elapsed_s": round(elapsed_s, 1)}


def print_live(live: dict[str, Any]) -> None:
    def ms(value: float | None) -> str:
        return f"{value:9.4f}" if value is not None else f"{'-':>9}"

    print(f"{'problem':24} {'dtype':5} {'conf':6} {'via':14} {'zero ms':>9} {'job ms':>9} "
          f"{'best ms':>9} {'job s':>6}  after")
    for e in live["per_problem"]:
        print(f"{e['problem']:24} {e['dtype']:5} "
              f"{e['first_answer'].get('confidence') or '-':6} {e['job_via']:14} "
              f"{ms(e.get('zero_shot_ms'))} {ms(e.get('after_job_ms'))} {ms(e.get('best_ms'))} "
              f"{e['job_seconds'] or 0:6.1f}  {e['after_answer'].get('source', '-')}")
    print(json.dumps({k: v for k, v in live.items() if k not in ("per_problem", "software")},
                     indent=2, default=str))


def _read(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text())) if path.exists() else {}


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def _live_mode(interpret: bool) -> str | None:
    """GPU or INTERPRETER, before anything imports triton; None (said why) when refused."""
    if not interpret and os.environ.get("TRITON_INTERPRET") == "1":
        say("TRITON_INTERPRET=1 is set: pass --interpret for a run under the interpreter")
        return None
    try:
        return select_mode(interpret)
    except PerftuneInputError:
        say("--live measures on a CUDA GPU, and none is visible here; pass --interpret too "
            "for a CPU smoke run under the Triton interpreter")
        return None


def prepare(identity: dict[str, Any], count: int, interpret: bool
            ) -> tuple[Path, list[tuple[Problem, dict[str, Any] | None]]]:
    """Step 1: the served store (this device known to it) and the problems, their rows gone."""
    db = fresh_store("measure-on-demand-live")
    device = str(identity["device_id"])
    with Store(db) as store:
        problems = live_problems(store, device, count, interpret)
        deleted = unmeasure(store, [p for p, _ in problems])
        if store.device(device) is None:
            store.upsert_device(device_record(identity))
    say(f"{len(problems)} problems of {device}; {deleted} of its rows deleted from {db}")
    return db, problems


def serve_and_tune(args: argparse.Namespace, identity: dict[str, Any], db: Path,
                   problems: list[tuple[Problem, dict[str, Any] | None]], budget: int,
                   work: Path) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Steps 1 (the model) to 3: `perftune serve` on ``db`` and the workers, in ``work``."""
    say(f"fitting the model ({args.trees} trees) on the served store")
    model = fit_models(db, work, args.trees)
    token = secrets.token_urlsafe(24)
    env = clean_env(args.interpret, token=token, home=str(work / "home"))
    server_env = {**env, "PERFTUNE_JOB_BUDGET": str(budget),
                  **({"PERFTUNE_INTERPRETER_DEVICES": "1"} if args.interpret else {})}
    local = worker_store(db, work / "worker.duckdb", str(identity["device_id"]))
    with serving(db, model, work / "serve.log", server_env, token) as service:
        say(f"perftune serve up at {service.url}")
        worker = [sys.executable, "-m", "perftune", "worker", "--once", "--service",
                  service.url, "--db", str(local), "--model", str(model), "--timeout",
                  str(MEASURE_TIMEOUT_S)]
        return measure_on_demand(service, problems, budget, worker, env, args.worker_timeout)


def live(args: argparse.Namespace) -> int:
    """The live mode (see the module's docstring); 0 when every answer was measured after its
    job and every config passed its check."""
    started = time.perf_counter()
    mode = _live_mode(args.interpret)
    if mode is None:
        return 2
    identity = identify(mode)
    budget = args.budget or (INTERPRET_BUDGET if args.interpret else LIVE_BUDGET)
    db, problems = prepare(identity, args.problems, args.interpret)
    if not problems:
        say(f"no held-out GEMM problem of {identity['device_id']} is swept whole in the "
            f"shipped data: nothing to compare with")
        return 2
    with tempfile.TemporaryDirectory(prefix="measure-on-demand-live-") as work:
        entries, seconds = serve_and_tune(args, identity, db, problems, budget, Path(work))
    retime_all(problems, entries, mode, args.rounds)
    summary = live_summary(args, identity, mode, budget, entries, seconds,
                           time.perf_counter() - started)
    results = args.results or (None if args.interpret else RESULTS / "measure_on_demand.json")
    if results is not None:
        _write(results, {**_read(results), "live": summary})
        say(f"wrote the key live of {results}")
    print_live(summary)
    return 0 if summary["answered_measured"] == len(entries) and summary["checks_passed"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=int, help="a tune job's measurements (default: the "
                        f"service's job budget in replay, {LIVE_BUDGET} live, "
                        f"{INTERPRET_BUDGET} under the interpreter)")
    parser.add_argument("--trees", type=int, default=60, help="forest size (default 60)")
    parser.add_argument("--seed", type=int, default=0, help="draw of the H200 problems")
    parser.add_argument("--results", type=Path, help="results file (default: "
                        "benchmarks/results/measure_on_demand.json; under --interpret none)")
    parser.add_argument("--live", action="store_true", help="live on this GPU through "
                        "`perftune serve` and `perftune worker` (see above)")
    parser.add_argument("--interpret", action="store_true", help="with --live: a CPU smoke "
                        "run under the Triton interpreter")
    parser.add_argument("--problems", type=int, default=6, help="live: held-out problems")
    parser.add_argument("--rounds", type=int, default=3, help="live: re-timing rounds")
    parser.add_argument("--worker-timeout", type=float, default=300.0, metavar="S",
                        help="live: longest one worker run may take (default 300)")
    args = parser.parse_args(argv)
    if args.interpret and not args.live:
        parser.error("--interpret goes with --live")
    return live(args) if args.live else replay(args)


def replay(args: argparse.Namespace) -> int:
    """The replay mode (see the module's docstring)."""
    args.budget = args.budget or Settings().job_budget
    started = time.perf_counter()
    out: dict[str, Any] = {
        **replay_header("measure_on_demand"),
        "family": FAMILY, "job_budget": args.budget, "trees": args.trees}
    with Store(fresh_store("measure-on-demand"), read_only=True) as store:
        model, meta = fit_model(store, family=FAMILY, n_estimators=args.trees, n_jobs=1)
        predictor = Predictor(model, meta)
        held = training_rows(store, family=FAMILY, heldout=True)
        train = training_rows(store, family=FAMILY)
        held = held.assign(predicted=predictor.predict(store, held)["predicted_ms"].to_numpy())
        out["heldout_problems"] = int(held.groupby(PROBLEM).ngroups)
        out["devices"] = sorted(set(held["device_id"]))
        out["regret_zero_shot"] = regret(held, "predicted")
        out["regret_after_job"] = geomean(_tuned(store, predictor, held, args.budget))
        out["regret_at_10"] = geomean(_tuned(store, predictor, held, 10))
        confidence = confidence_figures(store, predictor, held, train)
        out["high_confidence_within_2pct"] = confidence["within_2pct"]["high"]
        out["medium_confidence_within_2pct"] = confidence["within_2pct"]["medium"]
        out["low_confidence_within_2pct"] = confidence["within_2pct"]["low"]
        out["confidence_counts"] = confidence["counts"]
        out["confidence_judged"] = confidence["judged"]
        out["high_rule"] = {"margin": HIGH_MARGIN, "distance": HIGH_DISTANCE}
        out["confidence"] = confidence
        out["calibration"] = calibrate_confidence(train, Catalog.of(store, FAMILY), args.trees)
        transfer = cross_device(store, args.trees, args.seed, (0, 10))
        out["cross_device_mape_after_10"] = transfer["adapted"]["calibration_10"]
        out["cross_device_mape_after_0"] = transfer["mape"]["0"]
        out["cross_device"] = transfer
    high = out["high_confidence_within_2pct"]
    out["goals"] = {
        "regret_after_job >= 0.99": out["regret_after_job"] >= 0.99,
        "high_confidence_within_2pct >= 0.95": high is not None and high >= 0.95,
        "cross_device_mape_after_10 <= 0.10": out["cross_device_mape_after_10"] <= 0.10}
    out["elapsed_s"] = round(time.perf_counter() - started, 1)
    results = args.results or RESULTS / "measure_on_demand.json"
    _write(results, {**out, **{k: v for k, v in _read(results).items() if k == "live"}})
    shown = {k: v for k, v in out.items()
             if k not in ("confidence", "cross_device", "calibration")}
    shown["calibration"] = {k: v for k, v in out["calibration"].items() if k != "grid"}
    print(json.dumps(shown, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
