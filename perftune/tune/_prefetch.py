"""Work done in a background thread, so that no call waits for it: a kernel's records, read
from the store when the kernel is decorated; scikit-learn's import (a second or more) for a
kernel that will rank by its learned model, started while its configs compile; and each key's
records, written to the store after the call. Waited for by whoever needs the result, before
any fork (a fork while another thread holds an import lock leaves the child that lock forever)
and at exit. Nothing heavier starts at decoration: an import running beside a process's first
calls slows them down (both want the interpreter)."""

from __future__ import annotations

import atexit
import threading
from collections.abc import Callable
from typing import Any

_lock = threading.Lock()
_tasks: list[Task] = []
_waits_at_exit = False


class Task:
    """One loading job in its own daemon thread; :meth:`result` waits for it and returns what
    it returned, or raises what it raised."""

    def __init__(self, job: Callable[[], Any]):
        self._job = job
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="perftune-prefetch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._job()
        except BaseException as exc:  # raised to whoever asks for the result
            self._error = exc

    def join(self) -> None:
        """Wait for the job to end."""
        self._thread.join()

    def result(self) -> Any:
        self.join()
        if self._error is not None:
            raise self._error
        return self._value

    def done(self) -> bool:
        return not self._thread.is_alive()


def start(job: Callable[[], Any]) -> Task:
    """Run ``job`` in the background now (the process waits for it at exit)."""
    global _waits_at_exit
    task = Task(job)
    with _lock:
        if not _waits_at_exit:
            atexit.register(wait)
            _waits_at_exit = True
        _tasks[:] = [t for t in _tasks if not t.done()]
        _tasks.append(task)
    return task


def wait() -> None:
    """Wait until every job started here has ended (their errors are for their own callers)."""
    with _lock:
        tasks = list(_tasks)
    for task in tasks:
        task.join()


def import_learning() -> None:
    """What ranking by a kernel's learned model imports."""
    import sklearn.ensemble  # noqa: F401
