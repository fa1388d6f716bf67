"""Compiling a new key's configs at once, and starting a process without rehashing Triton.

Triton compiles a kernel mostly in Python and in passes that hold the GIL, so threads speed
a batch of compiles up by little. :class:`ForkedCompiles` is an executor for Triton's async
compile mode that runs each compile in a forked child process instead: the child writes the
binary to Triton's on-disk cache and exits, and the parent then loads it from there (a cache
hit). Forking keeps the kernel and its arguments as they are in the parent (a user's kernel
may live in a notebook or ``__main__``, where a spawned process could not import it), and the
child never touches the GPU: the compile it runs was set up, target included, in the parent.
A batch need not wait for its slowest compiles (:class:`Patience`): those are left running in
the background (:class:`Straggler`), and whoever launches their config waits for them then.

:func:`remember_triton_key` spares a new process the hash Triton takes of its own installation
(every module and its whole native library, hundreds of MB) before it may load a cached
kernel: perftune keeps that hash on disk, keyed by the size, modification time and inode of
every file of the Triton package, so any change to the installation computes it afresh.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import select
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perftune.collect.compile import COMPILE_NICENESS


def fork_available() -> bool:
    return hasattr(os, "fork") and sys.platform != "win32"


@dataclass(frozen=True)
class Patience:
    """How long a batch of compiles waits for its slowest ones. Once ``quorum`` (a fraction)
    of a batch of at least ``min_batch`` configs is ready (compiled before, or now), after
    ``t`` seconds, the batch waits until ``max(min_wait_s, factor * t)`` seconds from its
    start; the compiles still running then are left to finish in the background
    (:class:`Straggler`). A few configs (a large block, few warps) can compile for many
    times as long as the rest, and a new key need not wait for them: a later key times them
    once their binaries are ready."""

    factor: float = 3.0
    quorum: float = 0.5
    min_batch: int = 4
    min_wait_s: float = 1.0

    def deadline(self, batch: int, done_at: list[float]) -> float | None:
        """Seconds from the batch's start to stop waiting at, given when each of its finished
        compiles finished (ascending); None: wait for every one (yet)."""
        needed = max(1, math.ceil(self.quorum * batch))
        if batch < self.min_batch or len(done_at) < needed:
            return None
        return max(self.min_wait_s, self.factor * done_at[needed - 1])


class _ResolvingFuture(Future[Any]):
    """A future that, asked for its outcome before it has one, produces it (``resolve``): a
    compile left to the background never leaves whoever launches its config waiting."""

    resolve: Callable[[], None] | None = None

    def result(self, timeout: float | None = None) -> Any:
        self._produce()
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._produce()
        return super().exception(timeout)

    def _produce(self) -> None:
        resolve, self.resolve = self.resolve, None
        if resolve is not None and not self.done():
            resolve()


@dataclass
class _Child:
    pid: int
    errors: int  # read end of its error pipe: readable (EOF) once it has exited
    number: int  # the call it runs, in submission order
    launch: int | None  # the launch (of compile_at_once) that submitted it


class Straggler:
    """A compile still running in its forked child after its batch stopped waiting. Its
    future completes when :meth:`resolve` is called, or when anyone asks for its result."""

    def __init__(self, child: _Child, call: Callable[[], Any], future: _ResolvingFuture,
                 owner: ForkedCompiles):
        self.child, self.call, self.future, self.owner = child, call, future, owner
        future.resolve = self.resolve

    @property
    def launch(self) -> int | None:
        """The launch (of :func:`compile_at_once`) whose compile this is."""
        return self.child.launch

    def running(self) -> bool:
        """Whether the child is still compiling (reaped if it is done)."""
        if self.child in self.owner.running_children:
            if not _exited([self.child.errors], 0.0):
                return True
            self.owner.reap(self.child)
        return False

    def resolve(self) -> None:
        """Wait for the child, then complete the future by running the call here."""
        if self.child in self.owner.running_children:
            self.owner.reap(self.child)
        _complete(self.future, self.call)


class ForkedCompiles(Executor):
    """Runs each submitted call first in a forked child (for what it leaves on disk), at most
    ``workers`` children at once, then, in :meth:`finish`, in this process, where each call's
    result (or error) completes its future. The calls are meant to be compiles that find, the
    second time, the child's binary in Triton's cache; a child that fails only costs the
    parent compiling by itself, which then reports the error as Triton would."""

    def __init__(self, workers: int):
        if workers < 1:
            raise ValueError(f"workers must be at least 1 (got {workers})")
        self.workers = workers
        self.running_children: list[_Child] = []
        self._calls: list[tuple[_ResolvingFuture, Callable[[], Any]]] = []
        self._started: float | None = None
        self._done_at: list[float] = []  # seconds from the first submit, per child finished
        self.launch: int | None = None  # set by whoever submits, to tell the calls apart
        self.ahead_from: int | None = None  # launches from this one on: compiled ahead
        self.submitted = 0
        self.submitted_ahead = 0
        self.children_failed = 0
        self.child_errors: list[str] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        if self._started is None:
            from perftune.tune import _prefetch

            _prefetch.wait()  # no fork while another thread may hold an import lock
            self._started = time.monotonic()
        while len(self.running_children) >= self.workers:
            self._wait_any(None)
        call = functools.partial(fn, *args, **kwargs)
        pid, errors = _fork_running(call)
        self.running_children.append(_Child(pid, errors, len(self._calls), self.launch))
        self.submitted += 1
        self.submitted_ahead += self.ahead(self.running_children[-1])
        future = _ResolvingFuture()
        self._calls.append((future, call))
        return future

    def wait_children(self, patience: Patience | None = None, ready: int = 0) -> None:
        """Wait until every child has exited, or, with ``patience``, until its deadline, in a
        batch where ``ready`` more needed no compile (children compiling ahead: not waited
        for)."""
        self._done_at[:0] = [0.0] * ready
        batch = len(self._awaited()) + len(self._done_at)
        while self._awaited():
            deadline = patience.deadline(batch, self._done_at) if patience else None
            if deadline is None:
                self._wait_any(None)
                continue
            left = deadline - self._elapsed()
            if left <= 0:
                return
            self._wait_any(left)

    def finish(self, patience: Patience | None = None, ready: int = 0) -> list[Straggler]:
        """Wait for the children (with ``patience``: until its deadline, counting ``ready``
        more that needed no compile as done first), then complete each future whose child is
        done by running its call here. Returns the stragglers: calls whose children still
        run, their futures pending until resolved."""
        self.wait_children(patience, ready)
        calls, self._calls = self._calls, []
        late = {child.number: child for child in self.running_children}
        stragglers = []
        for number, (future, call) in enumerate(calls):
            if number in late:
                stragglers.append(Straggler(late[number], call, future, self))
            else:
                _complete(future, call)
        return stragglers

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Finish; with ``cancel_futures``, wait for the children but run nothing here: every
        future not yet done is cancelled."""
        if cancel_futures:
            for future, _ in self._calls:
                if future.cancel():  # and notified, so that as_completed counts it done
                    future.set_running_or_notify_cancel()
            self._calls = []
        for straggler in self.finish():  # none: finish() without patience waits for all
            straggler.resolve()

    def reap(self, child: _Child) -> None:
        """Wait for ``child`` to exit and count how it went."""
        self.running_children.remove(child)
        with os.fdopen(child.errors, "rb") as pipe:
            error = pipe.read().decode(errors="replace")
        _, status = os.waitpid(child.pid, 0)
        if not self.ahead(child):
            self._done_at.append(self._elapsed())
        if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
            self.children_failed += 1
            self.child_errors.append(error or f"exit status {status}")

    def ahead(self, child: _Child) -> bool:
        """Whether ``child`` compiles ahead (for a later key)."""
        return (self.ahead_from is not None and child.launch is not None
                and child.launch >= self.ahead_from)

    def _awaited(self) -> list[_Child]:
        return [child for child in self.running_children if not self.ahead(child)]

    def _wait_any(self, timeout: float | None) -> None:
        """Reap the children that exit within ``timeout`` seconds (None: at least one)."""
        ready = _exited([c.errors for c in self.running_children], timeout)
        for child in [c for c in self.running_children if c.errors in ready]:
            self.reap(child)

    def _elapsed(self) -> float:
        return time.monotonic() - (self._started or time.monotonic())


def _exited(pipes: list[int], timeout: float | None) -> list[int]:
    """The error pipes among ``pipes`` that are readable (their child wrote and exited)."""
    if not pipes:
        return []
    readable, _, _ = select.select(pipes, [], [], timeout)
    return list(readable)


def _complete(future: _ResolvingFuture, call: Callable[[], Any]) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(call())
    except BaseException as exc:  # the compile's own error, as Triton reports it
        future.set_exception(exc)


def _fork_running(call: Callable[[], Any]) -> tuple[int, int]:
    """A child that runs ``call`` at lower CPU priority and exits (status 0 if it returned,
    else 1 with the error written to a pipe): its pid and the pipe's read end."""
    read, write = os.pipe()
    with warnings.catch_warnings():  # "use of fork() may lead to deadlocks": the child only
        warnings.simplefilter("ignore", DeprecationWarning)  # compiles, then _exits
        pid = os.fork()
    if pid:
        os.close(write)
        return pid, read
    code = 1
    try:
        os.close(read)
        with contextlib.suppress(OSError):  # the parent's timing and imports come first
            os.nice(COMPILE_NICENESS)
        with open(os.devnull, "w") as quiet, contextlib.redirect_stderr(quiet), \
                contextlib.redirect_stdout(quiet):
            call()
        code = 0
    except BaseException as exc:
        with contextlib.suppress(BaseException):
            os.write(write, f"{type(exc).__name__}: {exc}"[:4000].encode())
    finally:
        os._exit(code)


@dataclass
class CompileBatch:
    """What :func:`compile_at_once` did (``report``: JSON-able counts) and the compiles it left
    running, by launch index."""

    report: dict[str, Any]
    stragglers: dict[int, Straggler] = field(default_factory=dict)


def compile_at_once(kernel: Any, args: tuple[Any, ...], launches: list[dict[str, Any]],
                    workers: int, *, patience: Patience | None = None,
                    while_compiling: Callable[[], Any] | None = None,
                    ahead: int = 0) -> CompileBatch:
    """Compile ``kernel`` (a ``@triton.jit`` function) for each keyword set of ``launches``
    (``warmup=True`` launches: nothing runs) on ``workers`` forked children, or threads where
    fork is unavailable; nothing with a Triton that has no async compile mode. A launch that
    fails to compile is left for its real launch to report. With ``patience``, the slowest
    compiles are left running (:class:`Patience`; launches already compiled count as done at
    once); launching their configs before they are done waits for them. The report says how
    many compiles were handed out, how many children failed (a failed child only costs the
    parent compiling by itself), the first child's error, and how many were left running.
    ``while_compiling`` is called once every compile has been handed out (no fork follows),
    while the children compile: work for this otherwise idle process. The last ``ahead``
    launches are compiled ahead, for later use: each only while a child process is free, and
    never waited for (all are left running, as stragglers; none without fork)."""
    try:
        from triton.runtime._async_compile import AsyncCompileMode
    except ImportError:  # a Triton without async compile: configs compile when timed
        return CompileBatch({"compiled": 0, "children_failed": 0, "child_error": None,
                             "left_running": 0, "ahead": 0})
    first_ahead = len(launches) - ahead

    def launch_all(executor: Any, ahead_too: bool = False) -> None:
        for index, launch in enumerate(launches):  # a launch's warmup=False gives way
            # compiling ahead: only where compiles can be left running, on idle children
            if index >= first_ahead and (not ahead_too or
                                         len(executor.running_children) >= executor.workers):
                break
            executor.launch = index
            with contextlib.suppress(Exception):
                kernel.run(*args, **{**launch, "warmup": True})

    if fork_available():
        forked = ForkedCompiles(workers)
        forked.ahead_from = first_ahead
        with AsyncCompileMode(forked, ignore_errors=True) as mode:
            leave = _can_leave_running(mode)  # else this Triton waits, as it closes, for all
            try:
                launch_all(forked, ahead_too=leave)
            except BaseException:  # an interrupt: every future must end, or the mode waits
                forked.shutdown(cancel_futures=True)
                raise
            if while_compiling is not None:
                while_compiling()
            needed = forked.submitted - forked.submitted_ahead
            stragglers = forked.finish(patience if leave else None, ready=first_ahead - needed)
            _leave_running(mode, stragglers)
        ahead_left = sum(forked.ahead(s.child) for s in stragglers)
        return CompileBatch(
            {"compiled": needed, "children_failed": forked.children_failed,
             "child_error": forked.child_errors[0] if forked.child_errors else None,
             "left_running": len(stragglers) - ahead_left, "ahead": forked.submitted_ahead},
            {s.launch: s for s in stragglers if s.launch is not None})
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool, AsyncCompileMode(pool, ignore_errors=True):
        launch_all(pool)
    return CompileBatch({"compiled": first_ahead, "children_failed": 0, "child_error": None,
                         "left_running": 0, "ahead": 0})


def _can_leave_running(mode: Any) -> bool:
    """Whether this Triton's async compile mode lets a batch end with futures pending (it
    waits, as it closes, for those it lists)."""
    return (isinstance(getattr(mode, "raw_futures", None), list)
            and isinstance(getattr(mode, "future_kernels", None), dict))


def _leave_running(mode: Any, stragglers: list[Straggler]) -> None:
    """Take the stragglers' futures off the mode's list, so that closing it does not wait."""
    pending = {id(s.future) for s in stragglers}
    if not pending:
        return
    mode.raw_futures[:] = [f for f in mode.raw_futures if id(f) not in pending]
    for key, future_kernel in list(mode.future_kernels.items()):
        if id(getattr(future_kernel, "future", None)) in pending:
            del mode.future_kernels[key]


_KEY_FILE = "triton_key.json"


def remember_triton_key(cache_dir: Path | None = None) -> bool:
    """Hand Triton its installation hash from perftune's cache (computing and keeping it on a
    miss); True when Triton now uses the remembered hash. Off with
    ``PERFTUNE_REMEMBER_TRITON_KEY=0``; a Triton without ``triton_key`` is left alone."""
    if os.environ.get("PERFTUNE_REMEMBER_TRITON_KEY", "1") in ("0", "false", "no"):
        return False
    try:
        import triton
        from triton.runtime import cache as triton_cache
    except ImportError:
        return False
    original = getattr(triton_cache, "triton_key", None)
    if original is None or getattr(original, "perftune_remembered", False):
        return original is not None
    signature = installation_signature(Path(triton.__file__).parent)
    path = (cache_dir or default_cache_dir()) / _KEY_FILE
    known = _read_json(path)
    key = known.get(signature)
    if not isinstance(key, str):
        key = str(original())
        _write_json(path, {signature: key})
    _install(original, key)
    return True


def installation_signature(package: Path) -> str:
    """A digest of every file's path, size, modification time and inode under ``package``."""
    digest = hashlib.sha256()
    for folder, dirs, files in os.walk(package):
        dirs.sort()
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in sorted(files):
            with contextlib.suppress(OSError):
                stat = os.stat(os.path.join(folder, name))
                digest.update(f"{folder}/{name}:{stat.st_size}:{stat.st_mtime_ns}:"
                              f"{stat.st_ino}\n".encode())
    return digest.hexdigest()


def _install(original: Callable[[], str], key: str) -> None:
    """Replace ``triton_key`` wherever a Triton module bound it."""
    def triton_key() -> str:
        return key

    triton_key.perftune_remembered = True  # type: ignore[attr-defined]
    triton_key.cache_clear = lambda: None  # type: ignore[attr-defined]
    for name, module in list(sys.modules.items()):
        if ((name == "triton" or name.startswith("triton."))
                and getattr(module, "triton_key", None) is original):
            module.triton_key = triton_key  # type: ignore[attr-defined,union-attr,unused-ignore]


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("PERFTUNE_CACHE_DIR", Path(base) / "perftune"))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically (a concurrent reader sees the old file or the new one)."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(data))
        os.replace(temporary, path)
