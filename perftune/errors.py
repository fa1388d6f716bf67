"""Errors that carry a message for the user: what was wrong and how to fix it."""

from __future__ import annotations


class PerftuneInputError(ValueError):
    """Bad input from a user (flag, file, problem, store). The CLI prints it and exits with 2."""


class StoreError(PerftuneInputError):
    """The database file is missing, is not a perftune store, or has an unsupported schema."""


class StoreNeedsMigrating(StoreError):
    """A store of an older schema opened read-only: opening it for writing migrates it."""
