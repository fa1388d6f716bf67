"""tuner.autotune: triton.autotune that times only the model's best configs (CPU: interpreter)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from perftune.errors import PerftuneInputError
from perftune.tune.autotune import autotune

ROOT = Path(__file__).resolve().parents[1]


def test_only_the_models_best_configs_are_timed(model_file: Path, shipped: Path,
                                                tmp_path: Path) -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    store = tmp_path / "store.duckdb"  # autotune writes its choices: not into the shared one
    shutil.copy(shipped, store)
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "autotune_gemm.py"),
                           str(model_file), str(store), "3"], env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    first, repeat, other = summary["calls"]
    assert summary["configs"] == 48
    assert first["benchmarked"] == 3 and other["benchmarked"] == 3  # budget, not all 48
    assert repeat["benchmarked"] == 0  # Triton's per-key cache, as with triton.autotune
    assert summary["imported"] == []  # the model's flat trees rank: no scikit-learn import
    for call in (first, repeat, other):
        assert call["correct"] and call["chosen_in_top"] and call["sorted"]


def test_bad_use_is_refused_clearly() -> None:
    # triton is not imported here: this process's tests run the interpreter, which must be
    # chosen before triton is first imported (tests/test_families.py)
    config = [SimpleNamespace(kwargs={"BLOCK_SIZE": 128}, num_warps=4, num_stages=3)]
    with pytest.raises(PerftuneInputError, match="budget must be at least 1"):
        autotune(config, key=["n"], budget=0)
    bad: list[tuple[dict[str, Any], str]] = [
        ({"min_keys": 0}, "min_keys must be at least 1"),
        ({"timer": "wall"}, "timer must be 'triton' or 'perftune'"),
        ({"finalists": -1}, "finalists must be 0"),
        ({"tie_margin": 1.5}, "tie_margin must be a fraction"),
        ({"compile_workers": 0}, "compile_workers must be at least 1"),
        ({"compile_patience": 0.5}, "compile_patience must be at least 1")]
    for option, message in bad:
        with pytest.raises(PerftuneInputError, match=message):
            autotune(config, key=["n"], **option)
    from perftune.tune.autotune import _row

    with pytest.raises(PerftuneInputError, match="no BLOCK_M, BLOCK_N, BLOCK_K"):
        _row(config[0], 1, 2, 3, "fp16", "nvidia-h100-80gb-hbm3")
