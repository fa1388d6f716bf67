"""Compiling at once in forked processes, and the remembered Triton installation hash.

Triton compiles for a GPU target without a GPU (to a cubin, with its own ptxas), so the forked
compiles run here for real; only launching needs a GPU (tests/test_gpu.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from perftune.tune._compile import (
    ForkedCompiles,
    fork_available,
    installation_signature,
)

# Triton is imported inside the tests, never at collection: the interpreter's tests need it
# first imported with TRITON_INTERPRET=1 (perftune.collect.device.select_mode sets it).
pytestmark = pytest.mark.skipif(not fork_available(), reason="needs os.fork")


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
