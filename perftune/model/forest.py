"""Random-forest runtime model with a calibrated uncertainty per prediction."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeAlias

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.ensemble import RandomForestRegressor

from perftune.model.trees import FlatTrees, ForestPredictor, TreeSet, log_baseline

Features: TypeAlias = "pd.DataFrame | Mapping[str, np.ndarray]"  # a frame, or arrays by name


class RuntimeForest(RegressorMixin, BaseEstimator):
    """Random forest on log runtime. The spread of the trees' predictions is the uncertainty;
    ``fit`` calibrates it on held-back *problems* so that ``predict_interval`` covers the truth
    about ``coverage`` of the time, then refits on everything.

    ``groups`` (one label per row, e.g. the problem) keeps a problem on one side of the
    calibration split. With ``residual_of`` (a feature holding a log-runtime baseline, by
    default the roofline's), the trees learn the log ratio of measured to baseline time.
    With ``separate`` (a 0/1 feature, by default ``is_cublas``), the rows of each value get a
    forest of their own: cuBLAS has one row per problem, and among hundreds of tiled configs
    per problem a shared forest barely learns it. The defaults (60 trees, leaves of at least 3
    rows) come from cross-validation over the training problems: larger, deeper forests were no
    more accurate and are slower to predict, which matters to the service.
    """

    def __init__(self, *, n_estimators: int = 60, min_samples_leaf: int = 3,
                 max_features: float = 0.5, coverage: float = 0.9,
                 calibration_share: float = 0.2, residual_of: str | None = "log_roofline_ms",
                 separate: str | None = "is_cublas", random_state: int = 0, n_jobs: int = -1):
        self.n_estimators = n_estimators
        self.min_samples_leaf = min_samples_leaf
        self.max_features = max_features
        self.coverage = coverage
        self.calibration_share = calibration_share
        self.residual_of = residual_of
        self.separate = separate
        self.random_state = random_state
        self.n_jobs = n_jobs

    def _forest(self) -> RandomForestRegressor:
        return RandomForestRegressor(
            n_estimators=self.n_estimators, min_samples_leaf=self.min_samples_leaf,
            max_features=self.max_features, random_state=self.random_state, n_jobs=self.n_jobs)

    def fit(self, features: pd.DataFrame, runtime_ms: pd.Series | np.ndarray,
            groups: pd.Series | np.ndarray | None = None) -> RuntimeForest:
        x = features.to_numpy(float)
        y = np.log(np.asarray(runtime_ms, float)) - log_baseline(features, self.residual_of)
        labels = np.asarray(groups if groups is not None else np.arange(len(y)))
        self.feature_names_in_ = list(features.columns)
        parts = self._parts(features)
        self.forests_: dict[float, RandomForestRegressor] = {}
        self.interval_scales_: dict[float, float] = {}
        self.part_rows_: dict[float, int] = {}
        for part in np.unique(parts):
            rows = parts == part
            self.part_rows_[part] = int(rows.sum())
            self.interval_scales_[part] = self._calibrate(x[rows], y[rows], labels[rows])
            self.forests_[part] = self._forest().fit(x[rows], y[rows])
        return self

    def adapt(self, features: pd.DataFrame, runtime_ms: pd.Series | np.ndarray,
              devices: pd.Series | np.ndarray) -> RuntimeForest:
        """Fit, for each device of ``devices`` (one id per row), a correction of this forest's
        log error on that device's rows: a forest on the same features whose prediction is
        added to the log runtime of that device's rows when :meth:`predict` is given their
        devices. A GPU measured on a few problems thereby borrows what the forest learned on
        the others (which it must not have been trained on) and corrects it by what its own
        rows show. Replaces a device's earlier correction. The correction's settings (100 trees,
        leaves of at least 2 rows, half the features per split) scored best on the H200's
        training problems with the H200 corrected from 10 others (benchmarks/
        measure_on_demand.py)."""
        devices = np.asarray(devices).astype(str)
        error = np.log(np.asarray(runtime_ms, float)) - self.predict_log(features)[0]
        x = self.predictor().matrix(features)
        adapters = dict(getattr(self, "device_adapters_", {}))
        for device in np.unique(devices):
            rows = devices == device
            adapters[str(device)] = RandomForestRegressor(
                n_estimators=100, min_samples_leaf=2, max_features=0.5,
                random_state=self.random_state, n_jobs=self.n_jobs).fit(x[rows], error[rows])
        self.device_adapters_ = adapters
        return self

    def _parts(self, features: Features) -> np.ndarray:
        if self.separate is None:
            return np.zeros(len(np.asarray(features[self.feature_names_in_[0]])))
        return np.asarray(features[self.separate], dtype=float)

    def _calibrate(self, x: np.ndarray, y: np.ndarray, labels: np.ndarray) -> float:
        unique = np.unique(labels)
        rng = np.random.default_rng(self.random_state)
        held = rng.choice(unique, max(1, int(len(unique) * self.calibration_share)),
                          replace=False)
        mask = np.isin(labels, held)
        if mask.all() or not mask.any():
            return 1.645
        forest = self._forest().fit(x[~mask], y[~mask])
        mean, spread = _ForestTrees(forest).mean_and_spread(x[mask])
        z = np.abs(y[mask] - mean) / np.maximum(spread, 1e-3)
        return float(np.quantile(z, self.coverage))

    def predictor(self, *, flat: bool = False) -> ForestPredictor:
        """What this forest predicts, as a :class:`~perftune.model.trees.ForestPredictor`:
        over its scikit-learn trees, or (``flat``) over copies of them as plain arrays, which
        predict the same without scikit-learn (what :func:`perftune.model.persist.save_model`
        saves beside the model)."""
        def trees(forest: RandomForestRegressor) -> TreeSet:
            return FlatTrees.of(forest.estimators_) if flat else _ForestTrees(forest)

        return ForestPredictor(
            tuple(self.feature_names_in_), self.residual_of, self.separate,
            {part: trees(forest) for part, forest in self.forests_.items()},
            self.interval_scales_, self.part_rows_,
            {device: trees(adapter)
             for device, adapter in getattr(self, "device_adapters_", {}).items()})

    def predict(self, features: Features, devices: Any = None) -> np.ndarray:
        """Predicted runtime in ms (``devices``: the rows' device ids, for the corrections of
        :meth:`adapt`)."""
        return self.predictor().predict(features, devices)

    def predict_log(self, features: Features, devices: Any = None
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Mean and spread (std across trees) of the predicted log runtime."""
        return self.predictor().predict_log(features, devices)

    def predict_interval(self, features: Features, devices: Any = None
                         ) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper runtime (ms) of the calibrated ``coverage`` interval."""
        return self.predictor().predict_interval(features, devices)

    def predict_with_interval(self, features: pd.DataFrame, devices: Any = None
                              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Runtime (ms) and the interval's bounds, from one pass over the trees."""
        return self.predictor().predict_with_interval(features, devices)


class _ForestTrees:
    """A scikit-learn forest's trees, predicting together."""

    def __init__(self, forest: RandomForestRegressor):
        self.forest = forest

    def mean_and_spread(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # The trees' low-level predict: the same numbers as tree.predict, without re-validating
        # the input once per tree (that validation costs more than the prediction on a ranking).
        x32 = np.ascontiguousarray(x, dtype=np.float32)
        per_tree = np.stack([tree.tree_.predict(x32)[:, 0] for tree in self.forest.estimators_])
        return per_tree.mean(axis=0), per_tree.std(axis=0)


class PowerForest(RuntimeForest):
    """The same forest on a device's average power (W) or energy per call (J) of a config:
    log target, no baseline (``residual_of=None``), the calibrated spread as its uncertainty.
    As for runtime, cuBLAS rows get a forest of their own (``separate="is_cublas"``: its
    kernels are not the tiled ones, and cross-validation over the training problems,
    benchmarks/model_cv.py, scores the separate forest better than a shared one). Train it only
    on rows whose energy was measured with the GPU kept busy (perftune.store.rules)."""

    def __init__(self, *, n_estimators: int = 100, min_samples_leaf: int = 2,
                 max_features: float = 0.5, coverage: float = 0.9,
                 calibration_share: float = 0.2, residual_of: str | None = None,
                 separate: str | None = "is_cublas", random_state: int = 0,
                 n_jobs: int = -1):
        super().__init__(n_estimators=n_estimators, min_samples_leaf=min_samples_leaf,
                         max_features=max_features, coverage=coverage,
                         calibration_share=calibration_share, residual_of=residual_of,
                         separate=separate, random_state=random_state, n_jobs=n_jobs)


class EnergyForest(PowerForest):
    """The power forest for energy per call (J), except that energy scales with the runtime:
    like the runtime forest, the trees learn the log ratio to the roofline's time, which
    predicts energy better than the plain target (benchmarks/model_accuracy.py reports both).
    One forest for all dataflows: a separate cuBLAS forest does not help energy."""

    def __init__(self, *, n_estimators: int = 100, min_samples_leaf: int = 2,
                 max_features: float = 0.5, coverage: float = 0.9,
                 calibration_share: float = 0.2, residual_of: str | None = "log_roofline_ms",
                 separate: str | None = None, random_state: int = 0, n_jobs: int = -1):
        super().__init__(n_estimators=n_estimators, min_samples_leaf=min_samples_leaf,
                         max_features=max_features, coverage=coverage,
                         calibration_share=calibration_share, residual_of=residual_of,
                         separate=separate, random_state=random_state, n_jobs=n_jobs)
