"""The strategy interface: how a tuner chooses what to measure next.

A strategy drives a :class:`~perftune.tune.search.Search` (which measures through a backend,
keeps every trial in an Optuna study and never measures a config twice) until the budget is
spent or it has nothing left to propose. Strategies that let an Optuna sampler propose configs
give it through :meth:`Strategy.sampler`; the others choose configs themselves.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, ClassVar

import optuna

if TYPE_CHECKING:
    from perftune.tune.search import Search


class Strategy(abc.ABC):
    """One way to search a problem's dataflows and configs with few measurements."""

    name: ClassVar[str]
    needs_model: ClassVar[bool] = False  # True: needs a trained model and the store

    def sampler(self, seed: int) -> optuna.samplers.BaseSampler:
        """The Optuna sampler of the study (the trials' record); random by default."""
        return optuna.samplers.RandomSampler(seed=seed)

    @abc.abstractmethod
    def run(self, search: Search) -> None:
        """Measure through ``search`` until its budget is spent or nothing is left."""
