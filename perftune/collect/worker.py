"""Launches run in a separate worker process, so that a config that crashes the CUDA context
or hangs costs one recorded failure and a restart, never the sweep.

The parent (the collector, which alone writes the store) sends one task at a time and waits
with a timeout; the child owns the device, the inputs and the timer.

The child leaves its parent's process group, so that a signal sent to the group (Ctrl-C in a
terminal, GNU timeout, a batch system's time limit) reaches only the parent, which stops at a
safe point and then stops the child. A child whose parent died (SIGKILL, a crash) exits
quietly: when it next touches the pipe, or within a second if it is busy. Given a handover
path (:mod:`.handover`), it waits for a new owner first, who takes it over as it is.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import os
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from perftune.collect.families._base import Config, Inputs
from perftune.collect.handover import (
    MAX_PATH,
    WAIT_S,
    HandoverListener,
    Owner,
    process_alive,
    take_over,
)
from perftune.collect.problems import Problem
from perftune.store.schema import MEASUREMENT_STATUSES

OK = "ok"
COMPILE_ERROR = "compile_error"
LAUNCH_ERROR = "launch_error"
WRONG_RESULT = "wrong_result"
TIMEOUT = "timeout"
OOM = "oom"
STATUSES = MEASUREMENT_STATUSES  # (OK, ..., OOM): the store checks imported rows against it

# What a pipe to a dead parent raises: EOF when it closed cleanly, ECONNRESET when it died with
# an answer unread, EPIPE on a send (ConnectionResetError and BrokenPipeError are OSErrors).
_PIPE_GONE = (EOFError, OSError)

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


def _leave_parent_group() -> None:
    """Signals to the parent's process group are the parent's to act on: it finishes the
    chunk in flight and then stops this process itself."""
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Out of the terminal's foreground group, a write to it must not stop this process.
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)


def _serve(conn: Connection, runner: _Runner) -> None:
    """Answer tasks until told to stop (None) or a failure leaves the device unusable."""
    while True:
        task = conn.recv()
        if task is None:
            return
        result = runner.run(task)
        conn.send(("result", result))
        if result.get("fatal"):
            return


def _child_main(conn: Connection, family_ref: str, mode: str, energy: bool,
                handover: str | None = None, wait_s: float = WAIT_S) -> None:
    _leave_parent_group()
    owner = Owner(wait_s if handover else None)
    owner.watch()
    try:
        runner = _Runner(family_ref, mode, energy)
    except BaseException as exc:
        with contextlib.suppress(*_PIPE_GONE):
            conn.send(("fatal", _error_text(exc) + "\n" + traceback.format_exc(limit=8)))
        return
    listener = None
    if handover:
        with contextlib.suppress(OSError):  # without one, it just cannot be taken over
            listener = HandoverListener(handover, (family_ref, mode, energy), owner,
                                        runner.identity)
    try:
        try:
            conn.send(("ready", runner.identity))
            _serve(conn, runner)
            return
        except _PIPE_GONE:  # the owner died or closed the pipe
            pass
        while listener is not None:  # wait for a new owner, then serve it
            conn = listener.next_owner()
            try:
                _serve(conn, runner)
                return
            except _PIPE_GONE:
                pass
    finally:
        if listener is not None:
            listener.close()


class WorkerFailed(Exception):
    """The worker died or hung on a task; it has been stopped and must be restarted."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


class Interrupted(KeyboardInterrupt):
    """A stop was requested (SIGTERM, SIGINT): the work ended at a safe point, with what was
    finished stored. Its text says what was kept."""


class IsolatedWorker:
    """The parent's handle on the worker process."""

    def __init__(self, family_ref: str, mode: str | Callable[[], str], *,
                 energy: bool = False, startup_timeout_s: float = 300.0,
                 handover: str | None = None, handover_wait_s: float = WAIT_S):
        """``mode``: the device mode, or how to choose it when the process is started, not
        taken over (one taken over at the handover path keeps its own)."""
        self.family_ref = family_ref
        self._mode = mode
        self.energy = energy
        self.startup_timeout_s = startup_timeout_s
        self.handover = handover if handover and len(handover.encode()) <= MAX_PATH else None
        self.handover_wait_s = handover_wait_s
        self.restarts = 0
        self.taken_over = 0  # processes taken over at the handover path, not started
        self._process: Any = None
        self._pid: int | None = None  # the process's, when taken over (not this one's child)
        self._conn: Connection | None = None

    @property
    def mode(self) -> str:
        if not isinstance(self._mode, str):
            self._mode = self._mode()
        return self._mode

    def start(self, should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
        """Start the child, or take over the one waiting at the handover path; returns its
        device identity. Starting takes seconds (imports, the device); if ``should_stop``
        turns true meanwhile, the child is killed and :class:`Interrupted` raised."""
        listen = None
        if self.handover:
            wanted = self._mode if isinstance(self._mode, str) else None
            knock = take_over(self.handover, (self.family_ref, wanted, self.energy))
            if knock.conn is not None and knock.identity is not None:
                self._conn, self._pid = knock.conn, knock.pid
                self._mode = str(knock.settings[1])
                self.taken_over += 1
                return knock.identity
            listen = self.handover if knock.free else None
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._process = ctx.Process(target=_child_main, daemon=True,
                                    args=(child, self.family_ref, self.mode, self.energy,
                                          listen, self.handover_wait_s))
        self._process.start()
        child.close()
        self._conn = parent
        wait_s = self.startup_timeout_s
        if should_stop is not None:  # wait in short steps, looking at the stop request
            deadline = time.monotonic() + wait_s
            while not parent.poll(0.1) and time.monotonic() < deadline:
                if should_stop():
                    self.kill()
                    raise Interrupted("stopped while the measurement worker was starting")
            wait_s = 0.0
        try:
            kind, payload = self._receive(wait_s, "starting the worker")
        except WorkerFailed:
            if should_stop is not None and should_stop():
                raise Interrupted("stopped while the measurement worker was starting") from None
            raise
        if kind != "ready":
            self.stop()
            raise RuntimeError(f"the measurement worker failed to start: {payload}")
        return dict(payload)

    @property
    def running(self) -> bool:
        return self._conn is not None

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
        elif self._pid is not None:
            with contextlib.suppress(OSError):
                os.kill(self._pid, signal.SIGKILL)
        self._forget()

    def _forget(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        self._process = None
        self._pid = None

    def stop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.send(None)
            if self._process is not None:
                self._process.join(timeout=10)
            elif self._pid is not None:  # not this process's child: it cannot be joined
                deadline = time.monotonic() + 10
                while process_alive(self._pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if not process_alive(self._pid):
                    self._pid = None  # gone: nothing to kill (its number may be reused)
        self.kill()
