"""The models perftune trains, by name: adding one is a line here (fit, the CLI's choices and
the model-file allow-list all read this)."""

from __future__ import annotations

from perftune.model.forest import EnergyForest, PowerForest, RuntimeForest
from perftune.model.roofline import RooflineModel

# `perftune fit --model NAME`: models of the runtime.
RUNTIME_MODELS: dict[str, type] = {"forest": RuntimeForest, "roofline": RooflineModel}
# `perftune fit --target NAME` other than runtime: one model each.
TARGET_MODELS: dict[str, type] = {"power": PowerForest, "energy": EnergyForest}


def estimator_classes() -> tuple[type, ...]:
    """Every model class a model file may hold."""
    return (*RUNTIME_MODELS.values(), *TARGET_MODELS.values())
