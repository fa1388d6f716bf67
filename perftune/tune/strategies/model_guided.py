"""perftune's model-guided search: the library first, then the candidate with the lowest
optimistic prediction, corrected as measurements arrive."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from perftune.errors import PerftuneInputError
from perftune.tune.strategies._base import Strategy

if TYPE_CHECKING:
    from perftune.tune.search import Search

EXPLORATION = 0.3  # how far below its prediction a candidate's uncertainty lets it reach
# A measured error spreads to configs within ~LOCAL_WIDTH (log2 units of each parameter);
# LOCAL_PRIOR weighs the dataflow's median error against the neighbours' own. Chosen by
# 3-fold cross-validation over the whole-space training problems (docs/tuner.md).
LOCAL_WIDTH = 1.0
LOCAL_PRIOR = 1.0


class ModelGuided(Strategy):
    """The library first (when allowed), then the candidate with the lowest optimistic prediction,
    corrected as measurements arrive by the model's error per dataflow and, near each measured
    config, by that config's own error; stop when no candidate can beat the best so far by
    more than ``margin``. With the energy objective it spends the whole budget on the
    fastest-predicted configs (the front's useful end: configs near the fastest, where a
    little time buys energy back)."""

    name = "model"
    needs_model = True

    def __init__(self, *, predictor: Any = None, store: Any = None, margin: float = 0.01):
        if predictor is None or store is None:
            raise PerftuneInputError("the model-guided method needs a trained model "
                                     "(`perftune fit`) and the store")
        self.predictor, self.store, self.margin = predictor, store, margin

    def run(self, search: Search) -> None:
        from perftune.model.features import with_config_columns

        problem = search.problem
        rows = search.candidates.assign(**problem.sizes, dtype=problem.dtype,
                                        device_id=problem.device)
        predicted = self.predictor.predict(
            self.store, with_config_columns(rows, search.family.params()))
        mean = np.log(predicted["predicted_ms"].to_numpy())
        spread = (np.log(predicted["high_ms"].to_numpy()) - np.log(predicted["low_ms"]
                  .to_numpy())) / 2 if "high_ms" in predicted else np.zeros(len(mean))
        frame = search.candidates.assign(mean=mean, spread=spread)
        library = frame[frame["dataflow"] == search.family.library_dataflow]
        if len(library):
            search.in_order(library)
        while search.spent < search.budget:
            is_open = np.array([(d, c) not in search.seen for d, c in
                                zip(frame["dataflow"], frame["config"], strict=True)])
            if not is_open.any():
                return
            corrected = (frame["mean"].to_numpy()
                         + local_corrections(search, frame, search.positions))[is_open]
            spread = frame["spread"].to_numpy()[is_open]
            best = search.result.best
            optimistic = corrected - spread
            if len(search.result.objectives) == 1 and best is not None and best.runtime_ms \
                    and optimistic.min() > math.log(best.runtime_ms / (1 + self.margin)):
                search.result.stopped_early = True
                return
            pick = frame.index[is_open][int(np.argmin(corrected - EXPLORATION * spread))]
            search.measure(search.study.ask(), frame.loc[pick, "dataflow"],
                           frame.loc[pick, "config"])


def local_corrections(search: Search, frame: pd.DataFrame, position: np.ndarray) -> np.ndarray:
    """Per candidate, the model's log error as measured so far: the dataflow's median error,
    plus the measured neighbours' own errors weighted by their nearness in config space (a
    kernel smoother shrunk towards the median)."""
    median = frame["dataflow"].map(_median_errors(search, frame)).to_numpy(float)
    index = {key: i for i, key in enumerate(zip(frame["dataflow"], frame["config"],
                                                strict=True))}
    measured = [(index[key], math.log(m.runtime_ms)) for key, m in search.seen.items()
                if m.runtime_ms and key in index]
    if not measured or LOCAL_WIDTH <= 0:
        return median
    rows = np.array([i for i, _ in measured])
    residual = np.array([t for _, t in measured]) - frame["mean"].to_numpy()[rows] \
        - median[rows]
    same = frame["dataflow"].to_numpy()[:, None] == frame["dataflow"].to_numpy()[rows][None]
    distance = ((position[:, None, :] - position[rows][None, :, :]) ** 2).sum(axis=2)
    weight = np.exp(-distance / (2 * LOCAL_WIDTH ** 2)) * same
    return median + (weight @ residual) / (weight.sum(axis=1) + LOCAL_PRIOR)


def _median_errors(search: Search, frame: pd.DataFrame) -> dict[str, float]:
    """Per dataflow, the median log error of the model on what was measured (0 before)."""
    indexed = frame.set_index(["dataflow", "config"])["mean"]
    errors: dict[str, list[float]] = {}
    for (dataflow, config), measured in search.seen.items():
        runtime = measured.runtime_ms
        if runtime:
            errors.setdefault(dataflow, []).append(math.log(runtime)
                                                   - indexed[(dataflow, config)])
    return {d: float(np.median(errors.get(d, [0.0]))) for d in frame["dataflow"].unique()}
