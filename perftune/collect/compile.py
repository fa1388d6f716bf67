"""Compile configs in parallel ahead of timing: compilation is most of a naive sweep's cost.

Pool processes fill Triton's on-disk cache; the timing worker then loads the binaries.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Hashable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from perftune.collect.families._base import Config, KernelFamily
from perftune.collect.problems import Problem

_family: KernelFamily | None = None


def _init(family_ref: str) -> None:
    global _family
    import signal

    from perftune.collect.families import load_family

    # Ctrl-C and SIGTERM are the parent's to handle (it stops at a chunk boundary and shuts
    # the pool down): a compiling process must neither print a traceback nor die mid-write.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _family = load_family(family_ref)


def _compile(problem: Problem, dataflow: str, config: Config) -> str | None:
    assert _family is not None
    try:
        _family.compile(problem, dataflow, config, "cuda")
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc)[:2000]}"
    return None


def _ready() -> None:
    """Nothing: done once a pool process has started and loaded the family."""


def default_workers() -> int:
    return max(1, min(16, (os.cpu_count() or 2) - 2))


class Precompiler:
    """A process pool that compiles each distinct (dataflow, config, specialization) once."""

    def __init__(self, family: KernelFamily, family_ref: str, workers: int | None = None):
        self.family = family
        self.workers = workers or default_workers()
        self._pool = ProcessPoolExecutor(max_workers=self.workers,
                                         mp_context=mp.get_context("spawn"),
                                         initializer=_init, initargs=(family_ref,))
        self._futures: dict[Hashable, Future[str | None]] = {}

    def start(self) -> list[Future[None]]:
        """Start the pool's processes now, not at the first configs (a pool starts one per
        task submitted while none is idle), to load the family while the caller goes on; the
        futures are done once the processes are."""
        return [self._pool.submit(_ready) for _ in range(self.workers)]

    def _key(self, problem: Problem, dataflow: str, config: Config) -> Hashable:
        return (dataflow, tuple(sorted(config.items())), problem.dtype,
                self.family.specialization(problem))

    def submit(self, items: Iterable[tuple[Problem, str, Config]]) -> None:
        for problem, dataflow, config in items:
            key = self._key(problem, dataflow, config)
            if key not in self._futures:
                self._futures[key] = self._pool.submit(_compile, problem, dataflow, config)

    def wait(self, problem: Problem, dataflow: str, config: Config) -> str | None:
        """Block until this config is compiled; returns the compile error, if any."""
        future = self._futures.get(self._key(problem, dataflow, config))
        if future is None:
            return None
        try:
            return future.result()
        except Exception as exc:  # a pool process died: let the worker compile it itself
            return None if "BrokenProcessPool" in type(exc).__name__ else str(exc)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def compile_targets(family: KernelFamily, tasks: Iterable[Any]) -> list[tuple[Problem, str,
                                                                             Config]]:
    return [(t.problem, t.dataflow, t.config) for t in tasks if family.space(t.dataflow)]
