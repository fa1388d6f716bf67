"""perftune's autotune on kernels of no family, under the Triton interpreter in subprocesses:
Triton's semantics kept, choices stored and reused across processes, invalidated by an edited
source, one record from two concurrent processes, and a learned model that measures only the
budget once it has seen enough keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import duckdb
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "autotune_kernel.py"

KERNELS = '''
import triton
import triton.language as tl


@triton.jit
def axpy_kernel(x_ptr, y_ptr, out_ptr, a, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(x_ptr + offs, mask=mask)
    y = tl.load(y_ptr + offs, mask=mask)
    tl.store(out_ptr + offs, a * x + y, mask=mask)  # EDIT


@triton.jit
def accumulate_kernel(x_ptr, acc_ptr, inout_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    acc = tl.load(acc_ptr + offs, mask=mask)
    tl.store(acc_ptr + offs, acc + tl.load(x_ptr + offs, mask=mask), mask=mask)
    tl.store(inout_ptr + offs, tl.load(inout_ptr + offs, mask=mask) * 2, mask=mask)
'''


def _kernels(directory: Path, edit: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "autotune_kernels.py").write_text(KERNELS.replace("# EDIT", edit))
    return directory


def _env() -> dict[str, str]:
    return {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT),
            "OMP_NUM_THREADS": "1"}


def _start(kernels: Path, db: Path, *argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(SCRIPT), str(kernels), str(db), *argv],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _finish(process: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    return dict(json.loads(out.strip().splitlines()[-1]))


def _run(kernels: Path, db: Path, *argv: str) -> dict[str, Any]:
    return _finish(_start(kernels, db, *argv))


def _choices(db: Path) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute("SELECT kernel, tuning_key, config, measured, ranked_by FROM "
                           "autotune_choices ORDER BY chosen_at").fetchall()
    finally:
        con.close()


def test_hooks_and_pruning_behave_as_in_triton_autotune(tmp_path: Path) -> None:
    summary = _run(_kernels(tmp_path / "k"), tmp_path / "s.duckdb", "hooks")
    ours, theirs = summary["perftune"], summary["triton"]
    assert ours["events"] == theirs["events"]  # same hooks, same order, same pruning
    assert theirs["events"][0] == "early:12" and "pre:reset" in theirs["events"]
    for result in (ours, theirs):
        assert result["acc_is_x"]  # reset_to_zero zeroed it after the benchmarks
        assert result["inout_doubled_once"]  # restore_value restored it after each one
        assert result["benchmarked_configs"] == 4  # early prune (9 left), then top_k=4
        assert result["best"]["BLOCK"] in (32, 64)  # the perf_model's 4: BLOCK 32 x3, 64 x1


def test_a_new_kernel_is_tuned_stored_reused_and_invalidated(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db, kernels = tmp_path / "s.duckdb", _kernels(tmp_path / "k")
    first = _run(kernels, db, "tune", "40", "40")
    tuned, repeat = first["calls"]
    assert tuned["benchmarked"] == 12 and repeat["benchmarked"] == 0  # no model yet: all
    assert tuned["correct"] and repeat["correct"] and first["writes"] == 1
    [(kernel, key, config, measured, ranked_by)] = _choices(db)
    assert (kernel, json.loads(key), measured, ranked_by) == ("axpy_kernel", [40, "torch.float32",
                                                              "torch.float32", "torch.float32"],
                                                              12, "all")
    assert json.loads(config)["BLOCK"] == tuned["best"]["BLOCK"]

    again = _run(kernels, db, "tune", "40")  # a new process: a lookup, no benchmark
    assert again["calls"][0]["benchmarked"] == 0 and again["benchmarks"] == 0
    assert again["reads"] == 1 and again["writes"] == 0 and again["calls"][0]["correct"]
    assert again["calls"][0]["best"] == tuned["best"]
    assert again["history"] == [{"key": key, "measured": 0, "ranked_by": "stored"}]

    edited = _run(_kernels(tmp_path / "k2", "# edited"), db, "tune", "40")
    assert edited["calls"][0]["benchmarked"] == 12  # another source: tuned again
    assert len(_choices(db)) == 2

    from perftune.cli import main

    assert main(["kernels", "--db", str(db), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["kernels"] == ["axpy_kernel"] and len(listed["choices"]) == 2
    assert {c["config"]["BLOCK"] for c in listed["choices"][:1]} == {tuned["best"]["BLOCK"]}
    assert sorted(m["measurements"] for m in listed["measured"].values()) == [12, 12]
    assert main(["kernels", "--db", str(db)]) == 0
    assert "axpy_kernel" in capsys.readouterr().out


def test_two_processes_tuning_one_key_leave_one_record(tmp_path: Path) -> None:
    db, kernels = tmp_path / "s.duckdb", _kernels(tmp_path / "k")
    both = [_start(kernels, db, "tune", "24", "--sleep", "0.05") for _ in range(2)]
    results = [_finish(p) for p in both]
    assert all(r["calls"][0]["correct"] and not r["local_only"] for r in results)
    assert len(_choices(db)) == 1
    con = duckdb.connect(str(db), read_only=True)
    try:
        [(rows, distinct)] = con.execute("SELECT count(*), count(DISTINCT config) FROM "
                                         "autotune_measurements").fetchall()
    finally:
        con.close()
    assert rows == distinct == 12


def test_the_learned_model_measures_only_the_budget_after_enough_keys(tmp_path: Path) -> None:
    db, kernels = tmp_path / "s.duckdb", _kernels(tmp_path / "k")
    summary = _run(kernels, db, "tune", "32", "48", "96", "160", "200", "300",
                   "--budget", "3", "--min-keys", "4")
    assert [c["benchmarked"] for c in summary["calls"]] == [12, 12, 12, 12, 3, 3]
    assert [h["ranked_by"] for h in summary["history"]][-2:] == ["learned", "learned"]
    assert all(c["correct"] for c in summary["calls"])
    assert [row[3:] for row in _choices(db)][-1] == (3, "learned")


def test_a_short_benchmark_screens_the_configs_and_finalists_are_timed_in_full(
        tmp_path: Path) -> None:
    db, kernels = tmp_path / "s.duckdb", _kernels(tmp_path / "k")
    summary = _run(kernels, db, "tune", "64", "200", "--timer", "perftune", "--finalists", "2",
                   "--tie-margin", "0.99")  # any runner-up within 99%: both timed in full
    for call, history in zip(summary["calls"], summary["history"], strict=True):
        assert call["correct"]
        assert history["measured"] == 12 and history["timed_in_full"] == 2
        # every config quickly, the four fastest (2 x finalists > budget) briefly, then the
        # two fastest in full
        assert call["benchmarked"] == 12 + 4 + 2
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute("SELECT tuning_key, config, runtime_ms, timer FROM "
                           "autotune_measurements").fetchall()
        chosen = con.execute("SELECT tuning_key, config, runtime_ms FROM "
                             "autotune_choices").fetchall()
    finally:
        con.close()
    assert len(rows) == 24 and all(ms is not None and ms > 0 for _, _, ms, _ in rows)
    assert sum(timer.endswith(":quick") for *_, timer in rows) == 2 * 8
    assert sum(timer.endswith(":screen") for *_, timer in rows) == 2 * 2
    for key, config, ms in chosen:  # the pick: the faster of its key's two full timings
        full = {c: t for k, c, t, timer in rows
                if k == key and not timer.endswith((":screen", ":quick"))}
        assert len(full) == 2 and config in full and ms == min(full.values())

    every = _run(kernels, tmp_path / "s2.duckdb", "tune", "64", "--timer", "perftune",
                 "--finalists", "0")  # screening off: every config timed in full, as Triton
    assert every["calls"][0]["benchmarked"] == 12
    assert every["history"][0]["timed_in_full"] == 12

    alone = _run(kernels, tmp_path / "s3.duckdb", "tune", "64", "--timer", "perftune",
                 "--finalists", "3", "--tie-margin", "0")  # no runner-up ties the fastest
    # a lone finalist is not timed again: the screen's time is its measurement
    assert alone["calls"][0]["correct"] and alone["history"][0]["timed_in_full"] == 0
    assert alone["calls"][0]["benchmarked"] == 12 + 6
    con = duckdb.connect(str(tmp_path / "s3.duckdb"), read_only=True)
    try:
        fastest = con.execute("SELECT config, runtime_ms FROM autotune_measurements WHERE "
                              "timer LIKE '%:screen' ORDER BY runtime_ms LIMIT 1").fetchone()
        chosen = con.execute("SELECT config, runtime_ms FROM autotune_choices").fetchall()
        timers = con.execute("SELECT DISTINCT split_part(timer, ':', -1) FROM "
                             "autotune_measurements ORDER BY 1").fetchall()
    finally:
        con.close()
    assert chosen == [fastest] and timers == [("quick",), ("screen",)]


def test_an_unusable_store_means_local_only_with_one_warning(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-store.duckdb"
    bad.write_text("not a database")
    process = _start(_kernels(tmp_path / "k"), bad, "tune", "24", "40")
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["local_only"] and [c["benchmarked"] for c in summary["calls"]] == [12, 12]
    assert err.count("the store is unavailable") == 1


def test_bad_options_are_refused() -> None:
    from perftune.errors import PerftuneInputError
    from perftune.tune.autotune import autotune

    with pytest.raises(PerftuneInputError, match="objective must be 'time' or 'energy'"):
        autotune([], key=["n"], objective="power")
    import torch

    if not torch.cuda.is_available():  # the energy objective on a GPU: tests/test_gpu.py
        with pytest.raises(PerftuneInputError, match="needs an NVIDIA GPU"):
            autotune([], key=["n"], objective="energy")
    with pytest.raises(PerftuneInputError, match="timer must be"):
        autotune([], key=["n"], timer="cuda")
    with pytest.raises(PerftuneInputError, match="finalists"):
        autotune([], key=["n"], finalists=-1)
    with pytest.raises(PerftuneInputError, match="compile_workers"):
        autotune([], key=["n"], compile_workers=0)
    with pytest.raises(PerftuneInputError, match="tie_margin"):
        autotune([], key=["n"], tie_margin=1.5)


def test_a_family_kernel_is_ranked_by_its_familys_model(shipped: Path, tmp_path: Path) -> None:
    from types import SimpleNamespace

    from perftune.tune.autotune import ModelPrune

    configs = [SimpleNamespace(kwargs={"BLOCK_SIZE": block}, num_warps=warps, num_stages=1)
               for block in (1024, 2048, 4096, 8192) for warps in (2, 4, 8, 16)]
    prune = ModelPrune(budget=3, family="rmsnorm", sizes={"m": "rows", "n": "cols"},
                       device="nvidia-h100-80gb-hbm3", dtype="bf16", db=shipped,
                       model=tmp_path / "rmsnorm_runtime.skops")
    kept = prune(configs, {"rows": 2048, "cols": 4096})
    ranked = prune.ranked[(2048, 4096, "bf16", "nvidia-h100-80gb-hbm3")]
    assert len(kept) == 3 and ranked["predicted_ms"].is_monotonic_increasing
    assert [configs[i] for i in ranked["index"].head(3)] == kept
