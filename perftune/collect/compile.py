"""Compile configs in parallel ahead of timing: compilation is most of a naive sweep's cost.

Pool processes fill Triton's on-disk cache; the timing worker then loads the binaries.

The pool's processes are forked from a fork server (``forkserver``) that imported torch, Triton
and the family's modules once, instead of each importing them anew (``spawn``): once the server
has imported them, a worker's dozen processes start in a fraction of a second, and their imports
do not compete for the CPUs with other workers' compiling. The server never touches CUDA
(importing torch does not initialise it), so its children may. A process started with
``spawn`` inherits its parent's environment as it is at that moment, a forked one the server's
as it was when the server started: a pool takes the server only while the environment is still
the same (else it spawns, as before).

The pools of one host share their work through Triton's cache directory (:class:`Claims`): a
process claims a binary before it compiles it, and notes it compiled once it has. Another
pool, a second GPU's worker, say, skips what is claimed or compiled, and its timing process
waits only for the claim to end; a worker started again after a crash finds its binaries
noted and waits for nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Hashable, Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

from perftune.collect.families._base import Config, KernelFamily
from perftune.collect.handover import process_alive
from perftune.collect.problems import Problem

_family: KernelFamily | None = None
COMPILE_NICENESS = 10  # added to a pool process's niceness (lower CPU priority)


def _init(family_ref: str, owner: int | None = None) -> None:
    global _family
    import signal

    from perftune.collect.families import load_family

    # Ctrl-C and SIGTERM are the parent's to handle (it stops at a chunk boundary and shuts
    # the pool down): a compiling process must neither print a traceback nor die mid-write.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Compiling runs beside the timing process on the same CPUs: at a lower priority, it
    # takes the CPUs the timing process leaves, and never delays a launch being timed.
    with contextlib.suppress(OSError):
        os.nice(COMPILE_NICENESS)
    if owner is not None:
        threading.Thread(target=_exit_without, args=(owner,), name="owner-watch",
                         daemon=True).start()
    _family = load_family(family_ref)
    for module in _family.compile_modules:  # imported here, not at the first config
        with contextlib.suppress(Exception):  # else the configs' compiling says why
            importlib.import_module(module)
    _set_up_device()


def _set_up_device() -> None:
    """What every compile here sets up first, and which takes seconds when a dozen processes
    do it at once: the GPU's context (compiling puts placeholders on the device) and Triton's
    driver. Done as the process starts, while the worker's measuring process starts too,
    not when the first configs wait for it."""
    with contextlib.suppress(Exception):  # no GPU: nothing to set up; else compiling says why
        import torch

        if torch.cuda.is_available():
            torch.empty(1, device="cuda")
            from triton.runtime import driver

            driver.active.get_current_target()


def _exit_without(owner: int) -> None:
    """Exit once the process that owns the pool is gone (killed: a pool process waits for work
    forever otherwise, holding its memory and, on a GPU, its CUDA context)."""
    while process_alive(owner):
        time.sleep(1.0)
    os._exit(0)


ELSEWHERE = "\0compiling elsewhere"  # a pool process's answer: another process claimed it


def _compile_here(problem: Problem, dataflow: str, config: Config) -> str | None:
    assert _family is not None
    try:
        _family.compile(problem, dataflow, config, "cuda")
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc)[:2000]}"
    return None


def _compile(problem: Problem, dataflow: str, config: Config,
             claim: str | None = None) -> str | None:
    """Compile one config (its error, if any); with a ``claim`` (:class:`Claims`), only if no
    other process has compiled it or is compiling it (:data:`ELSEWHERE`)."""
    if claim is None:
        return _compile_here(problem, dataflow, config)
    with Claims.hold(claim) as held:
        if not held:
            return ELSEWHERE
        if Claims.done(claim):
            return Claims.error(claim)
        error = _compile_here(problem, dataflow, config)
        Claims.note_done(claim, error)
        return error


def _ready() -> None:
    """Nothing: done once a pool process has started and loaded the family."""


def _pass_on(to: Future[None], done: Future[None]) -> None:
    if to.done():
        return
    if done.cancelled():
        to.cancel()
    elif done.exception() is not None:
        to.set_exception(done.exception())
    else:
        to.set_result(None)


def default_workers() -> int:
    return max(1, min(16, (os.cpu_count() or 2) - 2))


_RENEWALS = 3  # broken pools a Precompiler replaces
_RETAKES = 3  # claims a Precompiler takes over from compilers that died, per config
_PRELOADED = ("torch", "triton")  # what every family's compiling imports
_server_lock = threading.Lock()
_server: tuple[int | None, dict[str, str], str] | None = None  # ours: pid, environment, cwd


def _server_pid() -> int | None:
    from multiprocessing import forkserver

    return getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None)


def pool_context(preload: Sequence[str] = ()) -> BaseContext:
    """How a compile pool starts its processes: forked from the fork server, which imports
    :data:`_PRELOADED` and ``preload`` when this process first asks for it; ``spawn`` where
    there is no fork server, where the environment or working directory changed since it
    started, or where it is not the one this module started (its imports and environment are
    unknown)."""
    global _server
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    here = (dict(os.environ), os.getcwd())
    with _server_lock:
        if _server is None:
            if _server_pid() is not None:  # someone else's
                return mp.get_context("spawn")
            ctx.set_forkserver_preload(list(dict.fromkeys([*_PRELOADED, *preload])))
            from multiprocessing import forkserver

            forkserver.ensure_running()  # it imports in the background
            _server = (_server_pid(), *here)
        pid, env, cwd = _server
        if (env, cwd) != here or _server_pid() != pid:
            return mp.get_context("spawn")
    return ctx


class Claims:
    """What the compile pools of one host compile and have compiled, as files beside Triton's
    cache (so that clearing the cache clears them): a claim is a lock file, held (``flock``)
    while one process compiles, and a ``.done`` file once it is compiled, holding the compile
    error if there was one (so that no other process tries again). A claim names the family,
    the Triton version and the compile key. A ``.done`` file that outlived its binary costs
    time, not a wrong result: the timing process then compiles the config itself."""

    def __init__(self, folder: Path, family_ref: str):
        self.folder = folder
        self.prefix = f"{family_ref}|{_triton_version()}|"

    @classmethod
    def beside_triton_cache(cls, family_ref: str) -> Claims | None:
        """The claims in the Triton cache directory this process compiles into (the
        ``TRITON_CACHE_DIR`` environment variable, else Triton's default), if it can write
        there."""
        cache = os.environ.get("TRITON_CACHE_DIR") or os.path.join(
            os.environ.get("TRITON_HOME") or os.path.expanduser("~"), ".triton", "cache")
        folder = Path(cache) / "perftune-claims"
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            return None
        return cls(folder, family_ref)

    def of(self, key: Hashable) -> str:
        name = hashlib.sha256((self.prefix + repr(key)).encode()).hexdigest()[:32]
        return str(self.folder / name)

    @staticmethod
    @contextlib.contextmanager
    def hold(claim: str, wait: bool = False, shared: bool = False) -> Any:
        """Hold the claim while in the block (True), or say it is held elsewhere (False;
        with ``wait``, wait for it instead)."""
        fd = os.open(claim + ".lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
            try:
                fcntl.flock(fd, mode if wait else mode | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # releases the lock

    @staticmethod
    def done(claim: str) -> bool:
        return os.path.exists(claim + ".done")

    @staticmethod
    def error(claim: str) -> str | None:
        """The compile error noted with a claim done (None: compiled, or not done)."""
        try:
            return Path(claim + ".done").read_text() or None
        except OSError:
            return None

    @staticmethod
    def note_done(claim: str, error: str | None) -> None:
        """Note the claim done, with its error; written whole or not at all (a process killed
        while writing leaves no half note)."""
        part = f"{claim}.{os.getpid()}.part"
        with contextlib.suppress(OSError):
            Path(part).write_text(error or "")
            os.replace(part, claim + ".done")


def _triton_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("triton")
    except PackageNotFoundError:
        return "none"


class Precompiler:
    """A process pool that compiles each distinct (dataflow, config, specialization) once,
    sharing the work with the other pools of its host (:class:`Claims`)."""

    def __init__(self, family: KernelFamily, family_ref: str, workers: int | None = None):
        self.family = family
        self.family_ref = family_ref
        self.workers = workers or default_workers()
        self._context = pool_context([type(family).__module__, *family.compile_modules])
        self.start_method = self._context.get_start_method()
        self._pool = self._new_pool()
        self._renewals = 0
        self._futures: dict[Hashable, Future[str | None]] = {}
        self._items: dict[Hashable, tuple[Problem, str, Config]] = {}
        self.claims = Claims.beside_triton_cache(family_ref)

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=self.workers, mp_context=self._context,
                                   initializer=_init, initargs=(self.family_ref, os.getpid()))

    def start(self) -> list[Future[None]]:
        """Start the pool's processes now, not at the first configs (a pool starts one per
        task submitted while none is idle), to load the family and its compiling modules while
        the caller goes on; the futures are done once the processes are (a forked process may
        be ready before the next is asked for, and take two: the pool starts the rest as
        configs arrive, quickly). It does not wait: creating a forked process waits for the
        fork server's imports, so a thread does it."""
        ready: list[Future[None]] = [Future() for _ in range(self.workers)]

        def submit() -> None:
            for future in ready:
                try:
                    started = self._pool.submit(_ready)
                except BaseException as exc:  # shut down meanwhile, or broken
                    future.set_exception(exc)
                else:
                    started.add_done_callback(functools.partial(_pass_on, future))

        threading.Thread(target=submit, name="compile-pool-start", daemon=True).start()
        return ready

    def _key(self, problem: Problem, dataflow: str, config: Config) -> Hashable:
        return (dataflow, tuple(sorted(config.items())), problem.dtype,
                self.family.specialization(problem))

    def submit(self, items: Iterable[tuple[Problem, str, Config]]) -> None:
        """Queue the items' configs not queued before, nor compiled on this host before (they
        are done at once). A pool broken by a process that died (its configs' futures say so)
        is replaced, up to :data:`_RENEWALS` times; a config the pool cannot take is left to
        the timing worker, which compiles it itself."""
        for problem, dataflow, config in items:
            key = self._key(problem, dataflow, config)
            if key in self._futures:
                continue
            self._items[key] = (problem, dataflow, config)
            claim = self.claims.of(key) if self.claims else None
            if claim is not None and Claims.done(claim):
                done: Future[str | None] = Future()
                done.set_result(Claims.error(claim))
                self._futures[key] = done
                continue
            task = functools.partial(_compile, problem, dataflow, config, claim)
            try:
                self._futures[key] = self._pool.submit(task)
            except BrokenProcessPool:
                if self._renewals >= _RENEWALS:
                    continue
                self._renewals += 1
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = self._new_pool()
                with contextlib.suppress(Exception):
                    self._futures[key] = self._pool.submit(task)
            except Exception:  # shut down, or no process can be started
                continue

    def wait(self, problem: Problem, dataflow: str, config: Config) -> str | None:
        """Block until this config is compiled, here or by another process of the host;
        returns the compile error, if any."""
        key = self._key(problem, dataflow, config)
        for _ in range(_RETAKES + 1):
            future = self._futures.get(key)
            if future is None:
                return None
            try:
                error = future.result()
            except Exception as exc:  # a pool process died: let the worker compile it itself
                return None if "BrokenProcessPool" in type(exc).__name__ else str(exc)
            if error != ELSEWHERE or self.claims is None:
                return error
            claim = self.claims.of(key)
            with Claims.hold(claim, wait=True, shared=True):  # until the other is done
                if Claims.done(claim):
                    return Claims.error(claim)
            # Its compiler died first (a killed worker's pool, whose other configs are then
            # abandoned too): compile them in this pool, all at once, rather than leave them
            # to the timing process, which would compile each while its GPU waits.
            self._retake_abandoned()
        return None

    def _retake_abandoned(self) -> None:
        """Queue again the configs left to other compilers that died before they were done."""
        assert self.claims is not None
        abandoned = []
        for key, future in list(self._futures.items()):
            if (not future.done() or future.cancelled() or future.exception() is not None
                    or future.result() != ELSEWHERE):
                continue
            claim = self.claims.of(key)
            with Claims.hold(claim, shared=True) as free:  # not if one compiles it now
                if free and not Claims.done(claim):
                    abandoned.append(key)
        for key in abandoned:
            del self._futures[key]
        self.submit([self._items[key] for key in abandoned])

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def compile_targets(family: KernelFamily, tasks: Iterable[Any]) -> list[tuple[Problem, str,
                                                                             Config]]:
    return [(t.problem, t.dataflow, t.config) for t in tasks if family.space(t.dataflow)]
