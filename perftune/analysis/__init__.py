"""Analysis in notebooks: the store read as pandas frames (:mod:`perftune.analysis.frames`)
and matplotlib figures of them (:mod:`perftune.analysis.plots`).

>>> from perftune import analysis
>>> store = analysis.open_store()            # read-only; built from the shipped data if missing
>>> analysis.best_configs(store, family="gemm", device="nvidia-h200").shape
(40, 10)
"""

from __future__ import annotations

from perftune.analysis.frames import (
    as_problem,
    best_configs,
    compare_devices,
    config_runtimes,
    dataflow_winners,
    devices,
    energy_problems,
    families,
    heldout_problems,
    measurements,
    model_for,
    open_store,
    predictions,
    problem_key,
    roofline_points,
    save_small_models,
    time_energy_front,
    tuner_regret,
    with_sizes,
)

__all__ = ["as_problem", "best_configs", "compare_devices", "config_runtimes",
           "dataflow_winners", "devices", "energy_problems", "families", "heldout_problems",
           "measurements", "model_for", "open_store", "predictions", "problem_key",
           "roofline_points", "save_small_models", "time_energy_front", "tuner_regret",
           "with_sizes"]
