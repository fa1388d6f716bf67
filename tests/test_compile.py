"""Compiling at once in forked processes, and the remembered Triton installation hash.

Triton compiles for a GPU target without a GPU (to a cubin, with its own ptxas), so the forked
compiles run here for real; only launching needs a GPU (tests/test_gpu.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from perftune.tune._compile import (
    ForkedCompiles,
    Patience,
    compile_at_once,
    fork_available,
    installation_signature,
)

# Triton is imported inside the tests, never at collection: the interpreter's tests need it
# first imported with TRITON_INTERPRET=1 (perftune.collect.device.select_mode sets it).
pytestmark = pytest.mark.skipif(not fork_available(), reason="needs os.fork")

ROOT = Path(__file__).resolve().parents[1]


def _source(block: int) -> object:
    import triton.language as tl
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    def add(x, y, out, n, BLOCK: tl.constexpr):  # type: ignore[no-untyped-def]
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n
        tl.store(out + offsets, tl.load(x + offsets, mask=mask) + tl.load(y + offsets, mask=mask),
                 mask=mask)

    # a JITFunction, not triton.jit, which gives the interpreter's function (nothing to
    # compile) once TRITON_INTERPRET=1
    return ASTSource(JITFunction(add), {"x": "*fp32", "y": "*fp32", "out": "*fp32", "n": "i32",
                                        "BLOCK": "constexpr"}, {"BLOCK": block})


def test_children_compile_into_the_cache_and_the_parent_loads_from_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.runtime._async_compile import AsyncCompileMode

    cache = tmp_path / "triton-cache"
    monkeypatch.setenv("TRITON_CACHE_DIR", str(cache))
    target = GPUTarget("cuda", 90, 32)
    blocks = [64, 128, 256, 3]  # 3: not a power of two, which tl.arange refuses
    sources = {b: _source(b) for b in blocks}
    forked = ForkedCompiles(workers=2)
    with AsyncCompileMode(forked, ignore_errors=True) as mode:
        try:
            kernels = {b: mode.submit(("add", b), partial(triton.compile, sources[b],
                                                          target=target),
                                      lambda kernel: None, lambda future: None) for b in blocks}
            forked.wait_children()
            written = sorted(cache.rglob("*.cubin"))  # by the children: nothing ran here yet
        finally:
            forked.finish()  # the mode waits for every future as it closes
    assert len(written) == 3
    assert forked.children_failed == 1 and forked.submitted == 4
    assert "CompilationError" in forked.child_errors[0]
    for block in (64, 128, 256):
        kernel = kernels[block].result()
        assert kernel.asm["cubin"] and kernel.metadata.name == "add"
    assert kernels[3].result(ignore_errors=True) is None  # the parent's own compile failed too
    assert sorted(cache.rglob("*.cubin")) == written  # the parent found them: no new binaries


def test_each_call_runs_in_a_child_then_here(tmp_path: Path) -> None:
    forked = ForkedCompiles(workers=2)
    marks = tmp_path / "marks"
    marks.mkdir()

    def leave_mark(i: int) -> int:
        (marks / f"{i}-{os.getpid()}").write_text(str(len(list(marks.iterdir()))))
        return i

    futures = [forked.submit(leave_mark, i) for i in range(5)]
    forked.finish()
    assert [f.result() for f in futures] == list(range(5))
    here = [p for p in marks.iterdir() if p.name.endswith(f"-{os.getpid()}")]
    children = {p.name.split("-")[1] for p in marks.iterdir()} - {str(os.getpid())}
    assert len(here) == 5 and len(children) == 5 and forked.children_failed == 0
    with pytest.raises(ValueError, match="at least 1"):
        ForkedCompiles(workers=0)


def _key_in_new_process(cache_dir: Path, **env: str) -> str:
    code = ("from perftune.tune._compile import remember_triton_key\n"
            "import triton.runtime.cache as c\n"
            "remember_triton_key()\nprint(c.triton_key())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=300,
                         env={**os.environ, "PERFTUNE_CACHE_DIR": str(cache_dir), **env})
    return out.stdout.strip().splitlines()[-1]


def test_a_new_process_uses_the_remembered_installation_hash(tmp_path: Path) -> None:
    pytest.importorskip("triton")
    from triton.runtime.cache import triton_key

    real = triton_key()
    remembered = tmp_path / "triton_key.json"
    assert _key_in_new_process(tmp_path) == real  # a miss: computed, then kept
    (signature, kept), = json.loads(remembered.read_text()).items()
    assert kept == real
    remembered.write_text(json.dumps({signature: "remembered"}))
    assert _key_in_new_process(tmp_path) == "remembered"  # a hit: Triton did not rehash
    assert _key_in_new_process(tmp_path, PERFTUNE_REMEMBER_TRITON_KEY="0") == real
    remembered.write_text(json.dumps({"another installation": "stale"}))
    assert _key_in_new_process(tmp_path) == real


def test_the_installation_signature_follows_every_file(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    library = tmp_path / "lib" / "libtriton.so"
    library.write_bytes(b"x" * 10)
    before = installation_signature(tmp_path)
    assert installation_signature(tmp_path) == before
    library.write_bytes(b"y" * 11)
    assert installation_signature(tmp_path) != before


def test_an_interrupted_batch_leaves_no_future_waiting(tmp_path: Path) -> None:
    pytest.importorskip("triton")
    from triton.runtime._async_compile import AsyncCompileMode

    forked = ForkedCompiles(workers=2)
    with AsyncCompileMode(forked, ignore_errors=True) as mode:
        pending = [mode.submit(i, partial(os.getpid), lambda kernel: None, lambda future: None)
                   for i in range(3)]
        forked.shutdown(cancel_futures=True)  # what compile_at_once does on an interrupt
    assert all(p.result(ignore_errors=True) is None for p in pending)  # cancelled, not hung
    assert forked.children_failed == 0


def test_patience_waits_for_a_quorum_then_a_multiple_of_its_time() -> None:
    patience = Patience(factor=3.0, quorum=0.5, min_batch=4, min_wait_s=1.0)
    assert patience.deadline(8, [0.1, 0.2, 0.3]) is None  # 3 of 8: no quorum yet
    assert patience.deadline(8, [0.1, 0.2, 0.3, 0.6]) == pytest.approx(1.8)
    assert patience.deadline(8, [0.1, 0.1, 0.1, 0.2]) == 1.0  # never before min_wait_s
    assert patience.deadline(3, [0.1, 0.2]) is None  # a small batch waits for all


class _Kernel:
    """Launches as a ``@triton.jit`` kernel does in Triton's async compile mode: each new
    config's compile goes to the mode, which hands it to the executor."""

    def __init__(self, seconds: Mapping[int, float | None], marks: Path):
        self.seconds, self.marks = seconds, marks

    def compile(self, block: int) -> str:
        time.sleep(self.seconds[block] or 0.0)
        (self.marks / f"{block}-{os.getpid()}").touch()
        return f"binary {block}"

    def run(self, *args: object, BLOCK: int, warmup: bool, **kwargs: object) -> object:
        from triton.runtime._async_compile import active_mode

        mode = active_mode.get()
        assert mode is not None and warmup
        if self.seconds[BLOCK] is None:  # compiled before: nothing to hand out
            return "cached"
        return mode.submit(("k", BLOCK), partial(self.compile, BLOCK), lambda kernel: None,
                           lambda future: None)


def test_a_batch_leaves_its_slowest_compiles_running(tmp_path: Path) -> None:
    pytest.importorskip("triton")

    seconds = {16: 0.05, 32: 0.05, 64: 0.05, 128: 0.1, 256: 0.1, 512: 4.0}
    kernel = _Kernel(seconds, tmp_path)
    launches = [{"BLOCK": b} for b in seconds]
    started = time.monotonic()
    batch = compile_at_once(kernel, (), launches, workers=6,
                            patience=Patience(factor=3.0, min_wait_s=0.5))
    assert time.monotonic() - started < 3.0  # did not wait for the 4 s compile
    assert batch.report["compiled"] == 6 and batch.report["left_running"] == 1
    (straggler,) = batch.stragglers.values()
    assert straggler.launch == 5 and straggler.running()
    assert not straggler.future.done()
    # asking for its outcome waits for the child, then runs the call here
    assert straggler.future.result() == "binary 512"
    assert not straggler.running()
    assert {p.name.split("-")[0] for p in tmp_path.iterdir()
            if p.name.endswith(f"-{os.getpid()}")} == {str(b) for b in seconds}
    # without patience, a batch waits for everything
    waited = compile_at_once(_Kernel({1: 0.05, 2: 0.05, 3: 0.05, 4: 0.6}, tmp_path), (),
                             [{"BLOCK": b} for b in (1, 2, 3, 4)], workers=4)
    assert waited.report["left_running"] == 0 and not waited.stragglers
    # configs compiled before count as ready: a lone new compile is a straggler at once
    mostly_cached = compile_at_once(_Kernel({1: None, 2: None, 3: None, 4: 3.0}, tmp_path),
                                    (), [{"BLOCK": b} for b in (1, 2, 3, 4)], workers=4,
                                    patience=Patience(min_wait_s=0.3))
    assert mostly_cached.report == {"compiled": 1, "children_failed": 0, "child_error": None,
                                    "left_running": 1, "ahead": 0}
    assert list(mostly_cached.stragglers) == [3]


def test_compiles_ahead_use_idle_children_and_are_not_waited_for(tmp_path: Path) -> None:
    pytest.importorskip("triton")

    seconds = {1: 0.05, 2: 0.05, 3: 2.0, 4: 2.0, 5: None}
    launches = [{"BLOCK": b} for b in seconds]  # 1, 2 needed now; 3, 4, 5 for later keys
    started = time.monotonic()
    batch = compile_at_once(_Kernel(seconds, tmp_path), (), launches, workers=3, ahead=3)
    assert time.monotonic() - started < 1.5  # waited for the two needed, not those ahead
    assert batch.report == {"compiled": 2, "children_failed": 0, "child_error": None,
                            "left_running": 0, "ahead": 1}  # one child was free for them
    (ahead,) = batch.stragglers.values()
    assert ahead.launch == 2 and ahead.running()
    assert ahead.future.result() == "binary 3"


def test_a_straggler_resolves_after_its_child_is_done() -> None:
    forked = ForkedCompiles(workers=4)

    def work(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    futures = [forked.submit(work, s) for s in (0.01, 0.01, 0.01, 0.01, 1.0)]
    stragglers = forked.finish(Patience(factor=2.0, min_wait_s=0.2))
    assert [f.result() for f in futures[:4]] == [0.01] * 4
    (straggler,) = stragglers
    time.sleep(1.2)
    assert not straggler.running()  # reaped: done in the background
    straggler.resolve()
    assert futures[4].result() == 1.0 and forked.children_failed == 0


def test_a_key_leaves_out_the_configs_still_compiling_and_a_later_key_takes_them() -> None:
    pytest.importorskip("triton")
    from types import SimpleNamespace

    from perftune.tune._autotuner import PerftuneAutotuner

    forked = ForkedCompiles(workers=5)
    for seconds in (0.01, 0.01, 0.01, 0.01, 1.5):
        forked.submit(time.sleep, seconds)
    (straggler,) = forked.finish(Patience(factor=2.0, min_wait_s=0.2))
    configs = ["a", "b", "c"]
    tuner: Any = SimpleNamespace(_stragglers={id(configs[2]): straggler}, _left_out=0,
                                 _compiling_ahead=set())
    pick = PerftuneAutotuner._compiled_or_waiting
    assert pick(tuner, configs) == ["a", "b"] and tuner._left_out == 1  # still compiling
    time.sleep(1.6)
    assert pick(tuner, configs) == configs and tuner._left_out == 0  # done: measured now
    assert not tuner._stragglers and straggler.future.done()

    forked = ForkedCompiles(workers=5)
    for seconds in (0.01, 0.01, 0.01, 0.01, 1.0):
        forked.submit(time.sleep, seconds)
    (straggler,) = forked.finish(Patience(factor=2.0, min_wait_s=0.2))
    tuner = SimpleNamespace(_stragglers={id(configs[0]): straggler}, _left_out=0,
                            _compiling_ahead=set())
    assert pick(tuner, configs[:1]) == ["a"]  # nothing else to time: it waits for it
    assert straggler.future.done() and not straggler.running()

    forked = ForkedCompiles(workers=2)
    forked.submit(time.sleep, 0.01)
    forked.submit(time.sleep, 0.6)
    (ahead,) = forked.finish(Patience(factor=1.0, min_wait_s=0.0, min_batch=1))
    tuner = SimpleNamespace(_stragglers={id(configs[1]): ahead}, _left_out=0,
                            _compiling_ahead={id(configs[1])})
    assert ahead.running()  # compiled ahead by an earlier key: waited for, not left out
    assert pick(tuner, configs) == configs and tuner._left_out == 0
    assert ahead.future.done() and not tuner._stragglers and not tuner._compiling_ahead

    forked = ForkedCompiles(workers=2)
    forked.submit(time.sleep, 0.01)
    forked.submit(time.sleep, 0.3)
    (unused,) = forked.finish(Patience(factor=1.0, min_wait_s=0.0, min_batch=1))
    tuner = SimpleNamespace(_stragglers={id("elsewhere"): unused}, _left_out=0,
                            _compiling_ahead=set())
    time.sleep(0.5)
    assert pick(tuner, configs) == configs  # a key that does not need it reaps its child
    assert unused.child not in forked.running_children and not unused.future.done()


def test_a_background_job_gives_its_result_or_its_error_and_wait_ends_every_job() -> None:
    from perftune.tune import _prefetch

    def load() -> str:
        time.sleep(0.3)
        return "loaded"

    slow = _prefetch.start(load)
    failing = _prefetch.start(lambda: 1 / 0)
    _prefetch.wait()  # what compile_at_once does before it forks
    assert slow.done() and failing.done()
    assert slow.result() == "loaded"
    with pytest.raises(ZeroDivisionError):
        failing.result()


def test_a_process_waits_at_exit_for_its_background_jobs(tmp_path: Path) -> None:
    """The autotuner writes a key's records in the background: a process that ends right after
    a call still stores them."""
    written = tmp_path / "written"
    script = ("import time\nfrom pathlib import Path\nfrom perftune.tune import _prefetch\n"
              "def write():\n    time.sleep(0.5)\n"
              f"    Path({str(written)!r}).write_text('stored')\n"
              "_prefetch.start(write)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    assert done.returncode == 0, done.stderr
    assert written.read_text() == "stored"
