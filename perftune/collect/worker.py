"""Launches run in a separate worker process, so that a config that crashes the CUDA context
or hangs costs one recorded failure and a restart, never the sweep.

The parent (the collector, which alone writes the store) sends one task at a time and waits
with a timeout; the child owns the device, the inputs and the timer.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import traceback
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from perftune.collect.families._base import Config, Inputs
from perftune.collect.problems import Problem

OK = "ok"
COMPILE_ERROR = "compile_error"
LAUNCH_ERROR = "launch_error"
WRONG_RESULT = "wrong_result"
TIMEOUT = "timeout"
OOM = "oom"
STATUSES = (OK, COMPILE_ERROR, LAUNCH_ERROR, WRONG_RESULT, TIMEOUT, OOM)

_COMPILE_ERRORS = {"CompilationError", "OutOfResources", "CompileTimeAssertionFailure",
                   "PTXASError"}


@dataclass(frozen=True)
class Task:
    """One request to the worker for one config of one problem."""

    problem: Problem
    seed: int
    dataflow: str
    config: Config
    check: bool = True
    time: bool = True
    energy_window_s: float | None = None
    call_ms: float = 1.0


@dataclass
class _ProblemState:
    problem: Problem | None = None
    inputs: Inputs = field(default_factory=dict)
    reference: Any = None


def classify(exc: BaseException) -> tuple[str, bool]:
    """The status a failure is recorded with, and whether the worker must restart (a broken
    CUDA context poisons every later launch in the process)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    text = str(exc)
    if names & _COMPILE_ERRORS:
        return COMPILE_ERROR, False
    if "OutOfMemoryError" in names or "out of memory" in text.lower():
        return OOM, False
    fatal = "AcceleratorError" in names or "CUDA error" in text or "illegal" in text.lower()
    return LAUNCH_ERROR, fatal


def _error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 2000 else text[:2000] + " ..."


class _Runner:
    """The child's side: keeps the current problem's inputs and answers tasks."""

    def __init__(self, family_ref: str, mode: str, energy: bool):
        from perftune.collect.device import GPU, identify, prepare_runtime, torch_device
        from perftune.collect.families import load_family
        from perftune.collect.timers import timer_for

        prepare_runtime(mode)
        self.family = load_family(family_ref)
        self.identity = identify(mode)
        self.gpu = mode == GPU
        self.device = torch_device(mode)
        self.timer = timer_for(self.gpu)
        self.observer = None
        if energy and self.gpu:
            from perftune.collect.power.nvml import NVMLObserver

            self.observer = NVMLObserver()
        self.state = _ProblemState()

    def _prepare(self, problem: Problem, seed: int) -> _ProblemState:
        if self.state.problem != problem:
            import torch

            self.state = _ProblemState()
            if self.gpu:
                torch.cuda.empty_cache()
            inputs = self.family.make_inputs(problem, self.device, seed)
            reference = self.family.reference(problem, inputs)
            self.state = _ProblemState(problem, inputs, reference)
        return self.state

    def run(self, task: Task) -> dict[str, Any]:
        try:
            return self._run(task)
        except BaseException as exc:  # recorded, never raised: the sweep goes on
            status, fatal = classify(exc)
            return {"status": status, "error": _error_text(exc), "fatal": fatal,
                    "traceback": traceback.format_exc(limit=5)}

    def _run(self, task: Task) -> dict[str, Any]:
        family, problem = self.family, task.problem
        try:
            state = self._prepare(problem, task.seed)
        except BaseException as exc:
            status, fatal = classify(exc)
            return {"status": OOM if status == OOM else LAUNCH_ERROR,
                    "error": "making inputs: " + _error_text(exc), "fatal": fatal}
        if self.gpu and task.check:
            try:
                family.compile(problem, task.dataflow, task.config, self.device)
            except BaseException as exc:
                status, fatal = classify(exc)
                return {"status": COMPILE_ERROR if status == LAUNCH_ERROR else status,
                        "error": _error_text(exc), "fatal": fatal}
        fn = family.launcher(problem, task.dataflow, task.config, state.inputs)
        result: dict[str, Any] = {"status": OK}
        if task.check:
            result["rel_error"] = self._check(fn, state)
            if not result["rel_error"] <= family.tolerance(problem.dtype):
                result["status"] = WRONG_RESULT
                return result
        if task.time:
            result["samples_ms"] = list(self.timer.time(fn).samples_ms)
        if task.energy_window_s and self.observer is not None:
            from perftune.collect.power.nvml import measure_energy

            result.update(measure_energy(fn, self.observer, call_ms=task.call_ms,
                                         window_s=task.energy_window_s))
        return result

    def _check(self, fn: Any, state: _ProblemState) -> float:
        out = state.inputs["out"]
        out.fill_(float("nan"))
        fn()
        self.timer.synchronize()
        ref = state.reference
        error = float((out.float() - ref).norm() / ref.norm().clamp_min(1e-30))
        return error if math.isfinite(error) else math.inf


def _child_main(conn: Connection, family_ref: str, mode: str, energy: bool) -> None:
    try:
        runner = _Runner(family_ref, mode, energy)
    except BaseException as exc:
        conn.send(("fatal", _error_text(exc) + "\n" + traceback.format_exc(limit=8)))
        return
    conn.send(("ready", runner.identity))
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        result = runner.run(task)
        conn.send(("result", result))
        if result.get("fatal"):
            return


class WorkerFailed(Exception):
    """The worker died or hung on a task; it has been stopped and must be restarted."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


class IsolatedWorker:
    """The parent's handle on the worker process."""

    def __init__(self, family_ref: str, mode: str, *, energy: bool = False,
                 startup_timeout_s: float = 300.0):
        self.family_ref = family_ref
        self.mode = mode
        self.energy = energy
        self.startup_timeout_s = startup_timeout_s
        self.restarts = 0
        self._process: Any = None
        self._conn: Connection | None = None

    def start(self) -> dict[str, Any]:
        """Start the child; returns its device identity."""
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._process = ctx.Process(target=_child_main, daemon=True,
                                    args=(child, self.family_ref, self.mode, self.energy))
        self._process.start()
        child.close()
        self._conn = parent
        kind, payload = self._receive(self.startup_timeout_s, "starting the worker")
        if kind != "ready":
            self.stop()
            raise RuntimeError(f"the measurement worker failed to start: {payload}")
        return dict(payload)

    def _receive(self, timeout_s: float, doing: str) -> tuple[str, Any]:
        assert self._conn is not None
        if not self._conn.poll(timeout_s):
            self.kill()
            raise WorkerFailed(TIMEOUT, f"no answer after {timeout_s:.0f} s while {doing}; "
                                        f"the worker was killed")
        try:
            return self._conn.recv()
        except (EOFError, ConnectionError, OSError):
            code = self._exit_code()
            self.kill()
            raise WorkerFailed(LAUNCH_ERROR, f"the worker process died while {doing} "
                                             f"(exit code {code})") from None

    def _exit_code(self) -> int | None:
        if self._process is None:
            return None
        self._process.join(timeout=5)
        return self._process.exitcode

    def request(self, task: Task, timeout_s: float) -> dict[str, Any]:
        """Run one task; a crash or hang raises :class:`WorkerFailed` after stopping the
        child (call :meth:`start` again before the next task)."""
        if self._conn is None:
            self.restarts += 1
            self.start()
        assert self._conn is not None
        try:
            self._conn.send(task)
        except (BrokenPipeError, OSError):
            self.kill()
            raise WorkerFailed(LAUNCH_ERROR, "the worker process had died") from None
        kind, payload = self._receive(timeout_s, f"running {task.dataflow} {task.config}")
        if kind != "result":
            self.kill()
            raise WorkerFailed(LAUNCH_ERROR, str(payload))
        if payload.get("fatal"):
            self._exit_code()
            self._forget()
        return dict(payload)

    def kill(self) -> None:
        if self._process is not None and self._process.is_alive():
            self._process.kill()
            self._process.join(timeout=10)
        self._forget()

    def _forget(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        self._process = None

    def stop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.send(None)
            if self._process is not None:
                self._process.join(timeout=10)
        self.kill()
