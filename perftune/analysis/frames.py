"""The notebook API: the store's measurements as pandas frames, read-only.

Every function takes an open :class:`~perftune.store.db.Store` (:func:`open_store`) and returns
a DataFrame; the SQL lives in :mod:`perftune.store.queries`. Aggregates (best configs, winners,
rooflines, fronts) read only ok rows that perftune measured itself on a GPU.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from perftune.collect.families import BUILTIN, KernelFamily, load_family
from perftune.collect.problems import Problem, normalize_dtype
from perftune.errors import PerftuneInputError
from perftune.model.persist import save_model
from perftune.model.runtime import Predictor, fit_model, model_path, training_rows
from perftune.store import queries
from perftune.store.dataset import ensure_default_store, heldout_mask
from perftune.store.db import Store
from perftune.store.keys import canonical_shape

ProblemLike = Problem | str | Mapping[str, int]

# A small forest (seconds to train) for when the user has no model of a family yet.
SMALL_FOREST: dict[str, Any] = {"n_estimators": 16, "min_samples_leaf": 5}
_MODELS: dict[tuple[str, str], Predictor] = {}


def open_store(path: str | Path | None = None) -> Store:
    """The store at ``path`` opened read-only; without a path the default store
    (``$PERFTUNE_HOME/perftune.duckdb``), built from the shipped dataset when missing.

    >>> store = open_store()
    >>> int(store.query("SELECT count(*) AS n FROM measurements")["n"][0])
    104367
    """
    if path is None:
        ensure_default_store()
    return Store(path, read_only=True)


def families(store: Store) -> list[str]:
    """The families the store has verified GPU rows of, built-in ones first.

    >>> families(store)
    ['decode_attention', 'gemm', 'rmsnorm']
    """
    return sorted(queries.trainable_families(store))


def devices(store: Store) -> pd.DataFrame:
    """The GPUs the store knows, with their measured ceilings.

    >>> devices(store)[["device_id", "peak_tflops_fp16", "copy_bandwidth_gbs"]]
                    device_id  peak_tflops_fp16  copy_bandwidth_gbs
    0  nvidia-h100-80gb-hbm3        701.605754         3020.744608
    1            nvidia-h200        696.584745         4236.536819
    """
    return queries.gpu_devices(store)


def problem_key(problem: ProblemLike | None, family: str | KernelFamily,
                dtype: str | None = None) -> tuple[str | None, str | None]:
    """(shape, dtype) of a problem given as a :class:`Problem`, a canonical shape
    (``"m=64,n=11008,k=4096"``), sizes in the family's order (``"64x11008x4096"``) or a dict
    of sizes; dtype from the Problem or ``dtype`` (None: any).

    >>> problem_key("64x11008x4096", "gemm", "fp16")
    ('m=64,n=11008,k=4096', 'fp16')
    """
    kind = family if isinstance(family, KernelFamily) else load_family(family)
    if dtype is not None:
        dtype = normalize_dtype(dtype)
    if problem is None:
        return None, dtype
    if isinstance(problem, Problem):
        return problem.shape, normalize_dtype(problem.dtype)
    if isinstance(problem, Mapping):
        sizes = {d: int(problem[d]) for d in kind.dims}
    elif "=" in problem:
        sizes = {k: int(v) for k, v in (p.split("=", 1) for p in problem.split(","))}
    else:
        values = problem.lower().split("x")
        if len(values) != len(kind.dims):
            raise PerftuneInputError(f"{problem!r}: give {len(kind.dims)} sizes "
                                     f"({'x'.join(kind.dims)}) of a {kind.name} problem")
        sizes = dict(zip(kind.dims, (int(v) for v in values), strict=True))
    return canonical_shape({d: sizes[d] for d in kind.dims}), dtype


def with_sizes(frame: pd.DataFrame, family: str | KernelFamily) -> pd.DataFrame:
    """``frame`` with a column per size of ``family``, read from its ``shape`` column."""
    kind = family if isinstance(family, KernelFamily) else load_family(family)
    out = frame.copy()
    parsed = [dict(p.split("=", 1) for p in s.split(",")) for s in out["shape"]]
    for dim in kind.dims:
        out[dim] = np.array([int(p[dim]) for p in parsed], dtype=np.int64)
    return out


def measurements(store: Store, *, device: str | None = None, family: str | None = None,
                 dtype: str | None = None, dataflow: str | None = None,
                 problem: ProblemLike | None = None, status: str | None = "ok"
                 ) -> pd.DataFrame:
    """Stored measurements, filtered (None: all); ``status=None`` keeps failed rows too. With
    a family, its sizes come as columns too.

    >>> measurements(store, family="gemm", device="nvidia-h200", problem="1x11008x4096",
    ...              dtype="bf16")[["dataflow", "config", "runtime_ms"]].head(2)
      dataflow                                             config  runtime_ms
    0   triton  {"BLOCK_K":64,"BLOCK_M":256,"BLOCK_N":64,"GROU...    0.272104
    1   triton  {"BLOCK_K":128,"BLOCK_M":128,"BLOCK_N":32,"GRO...    0.209584
    """
    shape = None
    if problem is not None:
        if family is None:
            raise PerftuneInputError("give the family of the problem")
        shape, dtype = problem_key(problem, family, dtype)
    elif dtype is not None:
        dtype = normalize_dtype(dtype)
    frame = queries.filtered_measurements(store, family=_name(family), device=device,
                                          dtype=dtype, dataflow=dataflow, shape=shape,
                                          status=status)
    return with_sizes(frame, family) if family is not None and not frame.empty else frame


def best_configs(store: Store, *, family: str | None = None, device: str | None = None
                 ) -> pd.DataFrame:
    """The fastest measured config per problem and device: family, device_id, dtype, shape,
    sizes, dataflow, config, runtime_ms, library_ms (the family's library on the same problem)
    and speedup (library_ms / runtime_ms).

    >>> best_configs(store, family="gemm", device="nvidia-h200")[
    ...     ["shape", "dtype", "dataflow", "runtime_ms", "speedup"]].head(2)
                    shape dtype dataflow  runtime_ms   speedup
    0  m=1,n=11008,k=4096  bf16   cublas    0.034784  1.000000
    1  m=1,n=18944,k=3584  bf16   triton    0.044480  1.015468
    """
    names = [_name(family)] if family else sorted(BUILTIN)
    library = {n: load_family(n).library_dataflow for n in names if n is not None}
    frame = queries.best_per_problem(store, library=library, family=_name(family),
                                     device=device)
    return frame.assign(speedup=frame["library_ms"] / frame["runtime_ms"])


def dataflow_winners(store: Store, *, family: str = "gemm", device: str | None = None
                     ) -> pd.DataFrame:
    """Per problem and device, the best runtime of each dataflow (one column each, NaN where
    not measured), the winner, its margin over the runner-up (runner-up ms / winner ms), the
    winner's config, its variant (decode attention: ``sdpa``, ``split`` or ``no split`` by the
    winner's NUM_SPLITS; other families: the dataflow) and the family's sizes.

    >>> dataflow_winners(store, family="decode_attention")[
    ...     ["batch", "context", "sdpa", "triton_splitkv", "winner", "variant"]].head(2)
       batch  context      sdpa  triton_splitkv          winner variant
    0      1      512  0.012896        0.009504  triton_splitkv   split
    1      1   131072  0.138128        0.170080            sdpa    sdpa
    """
    kind = load_family(family)
    best = queries.best_per_dataflow(store, family=kind.name, device=device)
    if best.empty:
        raise PerftuneInputError(f"no ok {family} measurements"
                                 + (f" on {device}" if device else ""))
    keys = ["device_id", "dtype", "shape"]
    wide = best.pivot_table(index=keys, columns="dataflow", values="runtime_ms",
                            aggfunc="min").reset_index()
    wide.columns.name = None
    flows = [d for d in kind.dataflows if d in wide.columns]
    times = wide[flows].to_numpy(float)
    order = np.argsort(np.where(np.isnan(times), np.inf, times), axis=1)
    rows = np.arange(len(wide))
    wide["winner"] = np.array(flows)[order[:, 0]]
    wide["winner_ms"] = times[rows, order[:, 0]]
    runner = times[rows, order[:, 1]] if len(flows) > 1 else np.full(len(wide), np.nan)
    wide["margin"] = runner / wide["winner_ms"]
    configs = best.set_index([*keys, "dataflow"])["config"]
    wide["config"] = [configs[(d, t, s, w)] for d, t, s, w in
                      zip(wide["device_id"], wide["dtype"], wide["shape"], wide["winner"],
                          strict=True)]
    wide["variant"] = [_variant(kind, w, c) for w, c in
                       zip(wide["winner"], wide["config"], strict=True)]
    return with_sizes(wide, kind)


def _variant(kind: KernelFamily, dataflow: str, config: str) -> str:
    if kind.name != "decode_attention" or dataflow == kind.library_dataflow:
        return dataflow
    return "split" if json.loads(config).get("NUM_SPLITS", 1) > 1 else "no split"


def roofline_points(store: Store, *, family: str | None = None, device: str | None = None
                    ) -> pd.DataFrame:
    """Every ok row's achieved FLOP/s and bytes/s against its device's measured ceilings:
    the row's family, device_id, dtype, shape, dataflow, config, runtime_ms, flops, bytes,
    then intensity (FLOP/byte), achieved_tflops, achieved_gbs, peak_tflops (of the dtype),
    copy_bandwidth_gbs, attainable_tflops (min(peak, intensity x bandwidth)) and roof_fraction
    (achieved / attainable).

    >>> roofline_points(store, family="rmsnorm", device="nvidia-h200")[
    ...     ["intensity", "achieved_gbs", "roof_fraction"]].max()
    intensity           0.999985
    achieved_gbs     3926.085544
    roof_fraction       0.926721
    dtype: float64
    """
    frame = queries.roofline_rows(store, family=_name(family), device=device)
    seconds = frame["runtime_ms"] * 1e-3
    intensity = frame["flops"] / frame["bytes"]
    attainable = np.minimum(frame["peak_tflops"], intensity * frame["copy_bandwidth_gbs"] / 1e3)
    achieved = frame["flops"] / seconds / 1e12
    return frame.assign(intensity=intensity, achieved_tflops=achieved,
                        achieved_gbs=frame["bytes"] / seconds / 1e9,
                        attainable_tflops=attainable, roof_fraction=achieved / attainable)


def config_runtimes(store: Store, family: str, problem: ProblemLike, device: str,
                    dtype: str | None = None) -> pd.DataFrame:
    """Every ok config of one problem on one device, fastest first: dataflow, config,
    runtime_ms, rank (1 = fastest), relative (runtime / best) and library (the family's
    library row).

    >>> config_runtimes(store, "gemm", "64x11008x4096", "nvidia-h100-80gb-hbm3", "fp16")[
    ...     ["dataflow", "runtime_ms", "rank", "library"]].head(2)
      dataflow  runtime_ms  rank  library
    0   cublas    0.044688     1     True
    1   triton    0.045112     2    False
    """
    kind = load_family(family)
    shape, dtype = problem_key(problem, kind, dtype)
    rows = queries.filtered_measurements(store, family=kind.name, device=device, shape=shape,
                                         dtype=dtype, status="ok")
    rows = rows[(rows["runtime_ms"] > 0) & (rows["timer"].fillna("") != "client")]
    if rows.empty:
        raise PerftuneInputError(f"no ok {family} rows of {shape} {dtype or ''} on {device}")
    rows = rows.sort_values("runtime_ms", kind="stable").reset_index(drop=True)
    return rows[["device_id", "dtype", "shape", "dataflow", "config", "runtime_ms"]].assign(
        rank=np.arange(1, len(rows) + 1), relative=rows["runtime_ms"] / rows["runtime_ms"].min(),
        library=rows["dataflow"] == kind.library_dataflow)


def model_for(store: Store, family: str = "gemm") -> Predictor:
    """The user's model of ``family`` (``$PERFTUNE_HOME/models``) where there is one that this
    perftune can read, else a small forest trained on ``store`` now (seconds; kept for this
    process, never saved).

    >>> model_for(store, "rmsnorm").meta["rows"]
    1494
    """
    path = model_path("runtime", family=family)
    if path.exists() and (str(path), family) not in _MODELS:
        # one trained on other features than this perftune computes: a small one instead
        with contextlib.suppress(PerftuneInputError):
            _MODELS[(str(path), family)] = Predictor.load(path)
    key = (str(path), family) if (str(path), family) in _MODELS else (str(store.path), family)
    if key not in _MODELS:
        _MODELS[key] = Predictor(*fit_model(store, family=family, **SMALL_FOREST))
    return _MODELS[key]


def save_small_models(store: Store, folder: str | Path,
                      families: Sequence[str] | None = None) -> Path:
    """Small runtime forests of ``families`` (default every family in the store), with power
    and energy forests where the store has trusted energy rows, saved under ``folder`` as
    FAMILY_runtime.skops (what the service loads beside ``Settings.model``). Returns the GEMM
    runtime model's path, to pass as ``Settings(model=...)``.

    >>> save_small_models(store, tmp)
    PosixPath('/tmp/.../gemm_runtime.skops')
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    gemm = folder / "gemm_runtime.skops"
    for family in families or sorted(queries.trainable_families(store)):
        runtime = folder / f"{family}_runtime.skops"
        trained = _MODELS.get((str(store.path), family))  # a small one model_for trained
        save_model(runtime, *((trained.model, trained.meta) if trained else
                              fit_model(store, family=family, **SMALL_FOREST)))
        if queries.has_trusted_energy(store, family):
            for target in ("power", "energy"):
                save_model(model_path(target, runtime),
                           *fit_model(store, family=family, target=target, **SMALL_FOREST))
    return gemm


def predictions(store: Store, family: str = "gemm", *, device: str | None = None,
                predictor: Predictor | None = None) -> pd.DataFrame:
    """The model's runtime beside the measured one, row by row, on the held-out problems (never
    trained on): device_id, dtype, shape, dataflow, config, runtime_ms, predicted_ms, low_ms and
    high_ms (the 90% interval), inside (the measurement in it) and error (predicted / measured
    - 1). The model: ``predictor``, else :func:`model_for`.

    >>> p = predictions(store, "gemm", device="nvidia-h200")
    >>> round(p["error"].abs().mean(), 3), round(p["inside"].mean(), 3)
    (0.115, 0.897)
    """
    predictor = predictor or model_for(store, family)
    rows = training_rows(store, family=family, heldout=True)
    if device is not None:
        rows = rows[rows["device_id"] == device]
    if rows.empty:
        raise PerftuneInputError(f"no held-out {family} problems measured"
                                 + (f" on {device}" if device else ""))
    predicted = predictor.predict(store, rows)
    keep = ["device_id", "dtype", "shape", "dataflow", "config", "runtime_ms", "predicted_ms"]
    keep += [c for c in ("low_ms", "high_ms") if c in predicted.columns]
    out = predicted[keep].reset_index(drop=True)
    if "low_ms" in out:
        out["inside"] = (out["runtime_ms"] >= out["low_ms"]) & (out["runtime_ms"] <= out["high_ms"])
    return out.assign(error=out["predicted_ms"] / out["runtime_ms"] - 1)


def heldout_problems(store: Store, family: str = "gemm", device: str | None = None
                     ) -> pd.DataFrame:
    """The held-out problems of ``family`` measured in the store: device_id, dtype, shape,
    sizes, rows, dataflows; most rows (whole-space sweeps) first."""
    counts = queries.problem_counts(store, family=load_family(family).name, device=device)
    return counts[heldout_mask(counts, load_family(family).name)].reset_index(drop=True)


def as_problem(family: str | KernelFamily, shape: str, dtype: str,
               device: str | None = None) -> Problem:
    """The :class:`Problem` of a stored (shape, dtype), on ``device``."""
    kind = family if isinstance(family, KernelFamily) else load_family(family)
    sizes = dict(p.split("=", 1) for p in shape.split(","))
    return Problem(tuple((d, int(sizes[d])) for d in kind.dims), dtype, device)


def tuner_regret(store: Store, family: str = "gemm", *, device: str | None = None,
                 methods: Sequence[str] = ("model", "tpe", "random"),
                 budgets: Sequence[int] = (2, 4, 8), problems: int = 4, seed: int = 0
                 ) -> pd.DataFrame:
    """Each tuner method replayed on the ``problems`` held-out problems with the most rows (of
    ``device``, default the one with most), per budget: device_id, dtype, shape, method,
    budget, tuned_ms (the best it measured), best_ms (the best stored) and speed (best_ms /
    tuned_ms; 1 = no regret).

    >>> tuner_regret(store, "rmsnorm", budgets=(2, 8), problems=2).groupby(
    ...     ["method", "budget"])["speed"].mean()
    method  budget
    model   2         0.996653
            8         1.000000
    random  2         1.000000
            8         1.000000
    tpe     2         1.000000
            8         1.000000
    Name: speed, dtype: float64
    """
    from perftune.tune.replay import ReplayBackend
    from perftune.tune.search import tune

    held = heldout_problems(store, family, device)
    if held.empty:
        raise PerftuneInputError(f"no held-out {family} problems measured")
    device = device or str(held["device_id"].value_counts().index[0])
    held = held[held["device_id"] == device].head(problems)
    predictor = model_for(store, family) if "model" in methods else None
    records = []
    for shape, dtype in zip(held["shape"], held["dtype"], strict=True):
        problem = as_problem(family, shape, dtype, device)
        best_ms = float(config_runtimes(store, family, shape, device, dtype)["runtime_ms"].min())
        for method in methods:
            for budget in budgets:
                result = tune(problem, ReplayBackend(store, family=family), budget=budget,
                              method=method, predictor=predictor, store=store, seed=seed)
                tuned = result.best.runtime_ms if result.best else None
                tuned_ms = float(tuned) if tuned else np.nan
                records.append({"device_id": device, "dtype": dtype, "shape": shape,
                                "method": method, "budget": budget, "tuned_ms": tuned_ms,
                                "best_ms": best_ms, "speed": best_ms / tuned_ms})
    return pd.DataFrame.from_records(records)


def energy_problems(store: Store, family: str = "gemm", device: str | None = None
                    ) -> pd.DataFrame:
    """Problems with trusted energy rows (perftune.store.rules), most rows first."""
    return queries.energy_problems(store, family=load_family(family).name, device=device)


def time_energy_front(store: Store, family: str = "gemm", problem: ProblemLike | None = None,
                      device: str | None = None, dtype: str | None = None) -> pd.DataFrame:
    """The trusted-energy rows of one problem on one device (default: the problem with the
    most such rows), fastest first: dataflow, config, runtime_ms, avg_power_w,
    energy_per_call_j, and on_front (no other row is both faster and more frugal: the
    time-energy Pareto front is ``frame[frame.on_front]``).

    >>> f = time_energy_front(store, "gemm", "16x12288x4096", "nvidia-h100-80gb-hbm3", "bf16")
    >>> f[f.on_front][["runtime_ms", "energy_per_call_j"]]
       runtime_ms  energy_per_call_j
    0    0.047048           0.023191
    1    0.047744           0.021853
    2    0.047920           0.019676
    """
    kind = load_family(family)
    shape, dtype = problem_key(problem, kind, dtype)
    if shape is None or device is None:
        known = queries.energy_problems(store, family=kind.name, device=device)
        if dtype is not None:
            known = known[known["dtype"] == dtype]
        if known.empty:
            raise PerftuneInputError(f"no trusted energy rows of {family}")
        first = known.iloc[0]
        shape, dtype, device = (shape or first["shape"], dtype or first["dtype"],
                                device or first["device_id"])
    rows = queries.trusted_energy_rows(store, family=kind.name, device=device, shape=shape,
                                       dtype=dtype)
    if rows.empty:
        raise PerftuneInputError(f"no trusted energy rows of {family} {shape} on {device}")
    rows = rows.sort_values(["runtime_ms", "energy_per_call_j"], kind="stable")
    energy = rows["energy_per_call_j"].to_numpy(float)
    before = np.concatenate([[np.inf], np.minimum.accumulate(energy)[:-1]])
    return rows.assign(on_front=energy < before).reset_index(drop=True)


def compare_devices(store: Store, family: str = "gemm", problem: ProblemLike | None = None,
                    devices: Sequence[str] | None = None, dtype: str | None = None
                    ) -> pd.DataFrame:
    """The best runtime per dataflow (and ``best`` over all) of the problems measured on every
    one of ``devices`` (default: every GPU with rows of the family), or of ``problem``: dtype,
    shape, dataflow, a ``DEVICE`` column of ms per device, and speedup (first device's ms /
    last device's ms).

    >>> compare_devices(store, "gemm", "1x11008x4096", dtype="bf16").head(2)
      dtype               shape dataflow  nvidia-h100-80gb-hbm3  nvidia-h200   speedup
    0  bf16  m=1,n=11008,k=4096     best               0.044400     0.034784  1.276449
    1  bf16  m=1,n=11008,k=4096   cublas               0.045088     0.034784  1.296228
    """
    kind = load_family(family)
    shape, dtype = problem_key(problem, kind, dtype)
    best = queries.best_per_dataflow(store, family=kind.name, shape=shape, dtype=dtype)
    devices = list(devices) if devices else sorted(best["device_id"].unique())
    if len(devices) < 2:
        raise PerftuneInputError(f"{family} rows of fewer than two devices to compare")
    best = best[best["device_id"].isin(devices)]
    overall = best.groupby(["device_id", "dtype", "shape"], as_index=False)["runtime_ms"].min()
    both = pd.concat([overall.assign(dataflow="best"),
                      best[["device_id", "dtype", "shape", "dataflow", "runtime_ms"]]])
    wide = both.pivot_table(index=["dtype", "shape", "dataflow"], columns="device_id",
                            values="runtime_ms", aggfunc="min").reset_index()
    wide.columns.name = None
    missing = [d for d in devices if d not in wide.columns]
    if missing:
        raise PerftuneInputError(f"no {family} rows of {shape or 'any problem'} on {missing}")
    wide = wide.dropna(subset=devices).reset_index(drop=True)
    if wide.empty:
        raise PerftuneInputError(f"no {family} problem measured on all of {devices}")
    order = {"best": 0, **{d: i + 1 for i, d in enumerate(kind.dataflows)}}
    wide = wide.sort_values(["dtype", "shape"], kind="stable").sort_values(
        ["dtype", "shape", "dataflow"], key=lambda c: c.map(order) if c.name == "dataflow"
        else c, kind="stable").reset_index(drop=True)
    return wide[["dtype", "shape", "dataflow", *devices]].assign(
        speedup=wide[devices[0]] / wide[devices[-1]])


def _name(family: str | None) -> str | None:
    return load_family(family).name if family is not None else None
