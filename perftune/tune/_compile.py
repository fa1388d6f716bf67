"""Compiling a new key's configs at once, and starting a process without rehashing Triton.

Triton compiles a kernel mostly in Python and in passes that hold the GIL, so threads speed
a batch of compiles up by little. :class:`ForkedCompiles` is an executor for Triton's async
compile mode that runs each compile in a forked child process instead: the child writes the
binary to Triton's on-disk cache and exits, and the parent then loads it from there (a cache
hit). Forking keeps the kernel and its arguments as they are in the parent (a user's kernel
may live in a notebook or ``__main__``, where a spawned process could not import it), and the
child never touches the GPU: the compile it runs was set up, target included, in the parent.

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
import os
import sys
import warnings
from collections.abc import Callable
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any


def fork_available() -> bool:
    return hasattr(os, "fork") and sys.platform != "win32"


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
        self._running: list[tuple[int, int]] = []  # (pid, read end of its error pipe)
        self._calls: list[tuple[Future[Any], Callable[[], Any]]] = []
        self.submitted = 0
        self.children_failed = 0
        self.child_errors: list[str] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        while len(self._running) >= self.workers:
            self._wait(*self._running.pop(0))
        call = functools.partial(fn, *args, **kwargs)
        self._running.append(_fork_running(call))
        self.submitted += 1
        future: Future[Any] = Future()
        self._calls.append((future, call))
        return future

    def wait_children(self) -> None:
        """Wait until every child has exited."""
        while self._running:
            self._wait(*self._running.pop(0))

    def finish(self) -> None:
        """Wait for the children, then complete each future by running its call here."""
        self.wait_children()
        calls, self._calls = self._calls, []
        for future, call in calls:
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(call())
            except BaseException as exc:  # the compile's own error, as Triton reports it
                future.set_exception(exc)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Finish; with ``cancel_futures``, wait for the children but run nothing here: every
        future not yet done is cancelled."""
        if cancel_futures:
            for future, _ in self._calls:
                if future.cancel():  # and notified, so that as_completed counts it done
                    future.set_running_or_notify_cancel()
            self._calls = []
        self.finish()

    def _wait(self, pid: int, errors: int) -> None:
        with os.fdopen(errors, "rb") as pipe:
            error = pipe.read().decode(errors="replace")
        _, status = os.waitpid(pid, 0)
        if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
            self.children_failed += 1
            self.child_errors.append(error or f"exit status {status}")


def _fork_running(call: Callable[[], Any]) -> tuple[int, int]:
    """A child that runs ``call`` and exits (status 0 if it returned, else 1 with the error
    written to a pipe): its pid and the pipe's read end."""
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
        with open(os.devnull, "w") as quiet, contextlib.redirect_stderr(quiet), \
                contextlib.redirect_stdout(quiet):
            call()
        code = 0
    except BaseException as exc:
        with contextlib.suppress(BaseException):
            os.write(write, f"{type(exc).__name__}: {exc}"[:4000].encode())
    finally:
        os._exit(code)


def compile_at_once(kernel: Any, args: tuple[Any, ...], launches: list[dict[str, Any]],
                    workers: int) -> dict[str, Any]:
    """Compile ``kernel`` (a ``@triton.jit`` function) for each keyword set of ``launches``
    (``warmup=True`` launches: nothing runs) on ``workers`` forked children, or threads where
    fork is unavailable; nothing with a Triton that has no async compile mode. A launch that
    fails to compile is left for its real launch to report. Returns how many compiles were
    handed out, how many children failed, and the first child's error (a child that fails
    only costs the parent compiling by itself)."""
    try:
        from triton.runtime._async_compile import AsyncCompileMode
    except ImportError:  # a Triton without async compile: configs compile when timed
        return {"compiled": 0, "children_failed": 0, "child_error": None}

    def launch_all() -> None:
        for launch in launches:  # a launch's own warmup=False gives way to warmup=True
            with contextlib.suppress(Exception):
                kernel.run(*args, **{**launch, "warmup": True})

    if fork_available():
        forked = ForkedCompiles(workers)
        with AsyncCompileMode(forked, ignore_errors=True):
            try:
                launch_all()
            except BaseException:  # an interrupt: every future must end, or the mode waits
                forked.shutdown(cancel_futures=True)
                raise
            forked.finish()
        return {"compiled": forked.submitted, "children_failed": forked.children_failed,
                "child_error": forked.child_errors[0] if forked.child_errors else None}
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool, AsyncCompileMode(pool, ignore_errors=True):
        launch_all()
    return {"compiled": len(launches), "children_failed": 0, "child_error": None}


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
