"""A measuring process that outlives its owner for a while, and is taken over by the next one.

The isolated measuring process (:mod:`.worker`) takes seconds to start: a new Python, torch,
Triton, the family and a CUDA context. When the process that owns it dies (a cluster worker
killed, or out of memory), the worker's nanny starts a new one on the same GPU, which would
start all of that again. Given a handover path, the measuring process listens on a Unix
socket there. Once its owner is gone it waits up to :data:`WAIT_S` for a new one, which
connects, is checked to want the same settings, and carries on with the process as it is:
its CUDA context, loaded kernels and the current problem's inputs. If nobody comes, it exits,
as it would have at once without a handover path.

The socket lives in a directory only its user can enter (a local cluster makes one per run);
what goes over it is trusted as the pipe it stands in for is.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Client, Connection, Listener
from typing import Any

WAIT_S = 60.0  # an orphaned measuring process waits this long for a new owner
_CHECK_S = 0.5  # how often it looks whether its owner is still there
_ANSWER_S = 5.0  # a process that listens answers a knock within this
FINISH_S = 30.0  # an orphan still measuring (a config of its late owner) finishes within this
MAX_PATH = 100  # bytes: longer Unix socket paths are refused by the system


def process_alive(pid: int) -> bool:
    """Whether a process runs (a zombie, dead but not yet reaped, does not); it need not be
    this one's child."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc: ask the system
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except OSError:  # there, not ours to signal
            return True
        return True


class Owner:
    """Who the measuring process answers to: its parent, then whoever took it over. A thread
    exits the process, quietly, once the owner is gone and nobody took over within ``wait_s``
    (at once where ``wait_s`` is None), even while a launch hangs: nothing else would ever stop
    it."""

    def __init__(self, wait_s: float | None):
        self.parent = os.getppid()
        self.adopter: int | None = None
        self.wait_s = wait_s

    def alive(self) -> bool:
        if self.adopter is None:
            return os.getppid() == self.parent
        return process_alive(self.adopter)

    def taken_over_by(self, pid: int) -> None:
        self.adopter = pid

    def watch(self) -> None:
        threading.Thread(target=self._watch, name="owner-watch", daemon=True).start()

    def _watch(self) -> None:
        gone_since: float | None = None
        while True:
            time.sleep(_CHECK_S)
            if self.alive():
                gone_since = None
                continue
            if self.wait_s is None:
                os._exit(0)
            gone_since = gone_since or time.monotonic()
            if time.monotonic() - gone_since > self.wait_s:
                os._exit(0)


class HandoverListener:
    """The measuring process's side: answers a knock at ``path`` from a would-be owner with
    the same ``settings``, once its owner is gone; :meth:`next_owner` then hands the process
    over."""

    def __init__(self, path: str, settings: tuple[Any, ...], owner: Owner,
                 identity: dict[str, Any]):
        self.path, self.settings, self.owner, self.identity = path, settings, owner, identity
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a socket left by a process that is gone
        self._listener = Listener(path, "AF_UNIX")
        self._offers: queue.Queue[tuple[Connection, int]] = queue.Queue(maxsize=1)
        threading.Thread(target=self._accept, name="handover", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn = self._listener.accept()
            except OSError:  # closed
                return
            try:
                self._answer(conn)
            except (OSError, EOFError, ValueError):
                conn.close()

    def _answer(self, conn: Connection) -> None:
        if not conn.poll(_ANSWER_S):
            conn.close()
            return
        kind, pid, settings = conn.recv()
        if kind != "adopt" or not _same(tuple(settings), self.settings):
            conn.send(("refused", "it measures with other settings"))
            conn.close()
        elif self.owner.alive() or self._offers.full():
            conn.send(("refused", "it has an owner"))
            conn.close()
        else:
            conn.send(("orphan", os.getpid()))
            self._offers.put((conn, int(pid)))

    def next_owner(self) -> Connection:
        """Wait for a new owner (the owner watch exits the process if none comes), and tell
        it the device this process measures on."""
        conn, pid = self._offers.get()
        self.owner.taken_over_by(pid)
        conn.send(("adopted", {"identity": self.identity, "settings": self.settings}))
        return conn

    def close(self) -> None:
        self._listener.close()  # unlinks the socket


def _same(wanted: tuple[Any, ...], mine: tuple[Any, ...]) -> bool:
    """Whether settings a would-be owner wants are this process's (None: any)."""
    return len(wanted) == len(mine) and all(w is None or w == m for w, m in zip(wanted, mine,
                                                                                 strict=True))


@dataclass
class Knock:
    """What :func:`take_over` found at a handover path: a process taken over (``conn``,
    ``pid``, ``identity``, and its ``settings``), or none, and whether a new process may
    listen there (``free``)."""

    conn: Connection | None = None
    pid: int | None = None
    identity: dict[str, Any] | None = None
    settings: tuple[Any, ...] = ()
    free: bool = True


def take_over(path: str, settings: tuple[Any, ...], finish_s: float = FINISH_S) -> Knock:
    """Take over the orphaned measuring process listening at ``path``, if there is one with
    these settings (None in them: any). One that does not finish what it was doing within
    ``finish_s`` is killed (it hangs, on the GPU this caller is about to use)."""
    if not os.path.exists(path):
        return Knock()
    try:
        conn = Client(path, "AF_UNIX")
    except OSError:  # nobody listens: the process is gone
        return Knock()
    pid = None
    try:
        conn.send(("adopt", os.getpid(), settings))
        if not conn.poll(_ANSWER_S):
            raise TimeoutError
        kind, payload = conn.recv()
        if kind != "orphan":
            conn.close()
            return Knock(free=False)  # another owner's, or other settings: leave it be
        pid = int(payload)
        if not conn.poll(finish_s):
            raise TimeoutError
        kind, answer = conn.recv()
        if kind != "adopted":
            raise EOFError
    except (OSError, EOFError, TimeoutError, ValueError):
        conn.close()
        if pid is not None:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        return Knock()
    return Knock(conn, pid, dict(answer["identity"]), tuple(answer["settings"]))
