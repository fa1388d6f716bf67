"""Every family through the CLI as a user runs it: fit, predict and tune name the family, its
sizes are parsed and checked by the family, and its library is the baseline."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

H100 = "nvidia-h100-80gb-hbm3"
H200 = "nvidia-h200"
Cli = Callable[..., tuple[int, str, str]]


def test_rmsnorm_fit_predict_and_tune(shipped: Path, tmp_path: Path, cli: Cli) -> None:
    model = tmp_path / "rmsnorm_runtime.skops"
    code, out, err = cli("fit", "--family", "rmsnorm", "--db", shipped, "--trees", "8",
                         "--out", model)
    assert code == 0, err
    assert "runtime forest (rmsnorm)" in out
    code, out, err = cli("predict", "--family", "rmsnorm", "--db", shipped, "--model", model,
                         "--problem", "3000x7168", "--dtype", "bf16", "--device", H100,
                         "--top", "3", "--json")
    assert code == 0, err
    ranked = json.loads(out)
    assert len(ranked) == 3 and {r["dataflow"] for r in ranked} <= {"torch", "triton"}
    code, out, err = cli("tune", "--family", "rmsnorm", "--db", shipped, "--model", model,
                         "--problem", "m=256,n=4096", "--device", H100, "--budget", "6",
                         "--json")
    assert code == 0, err
    answer = json.loads(out)
    assert answer["family"] == "rmsnorm" and answer["library_dataflow"] == "torch"
    assert answer["measurements"] <= 6 and answer["runtime_ms"] <= answer["library_ms"]
    code, _, err = cli("predict", "--db", shipped, "--model", model, "--problem",
                       "128x4096x4096", "--device", H100)
    assert code == 2 and "rmsnorm model" in err


@pytest.mark.parametrize(("problem", "expected"), [
    ("batch=1,heads=32,context=32768,head_dim=128", "missing kv_heads"),
    ("batch=1,heads=32,kv_heads=8,context=32768,head_dim=128,depth=2", "unknown depth"),
    ("batch=1,heads=30,kv_heads=8,context=32768,head_dim=128", "kv_heads"),
])
def test_decode_attention_sizes_are_checked_by_the_family(problem: str, expected: str,
                                                          shipped: Path, cli: Cli) -> None:
    code, out, err = cli("tune", "--family", "decode_attention", "--db", shipped, "--method",
                         "random", "--problem", problem, "--device", H200)
    assert code == 2 and expected in err and out == ""
    assert len(err.strip().splitlines()) == 1


def test_decode_attention_tuned_by_replay_beats_or_ties_sdpa(shipped: Path, cli: Cli) -> None:
    code, out, err = cli("tune", "--family", "decode_attention", "--db", shipped, "--method",
                         "random", "--seed", "1", "--budget", "12", "--problem",
                         "batch=2,heads=24,kv_heads=8,context=65536,head_dim=128",
                         "--device", H200, "--json")
    assert code == 0, err
    answer = json.loads(out)
    assert answer["library_dataflow"] == "sdpa"
    assert answer["dataflow"] in ("sdpa", "triton_splitkv")
    assert answer["runtime_ms"] <= (answer["library_ms"] or float("inf"))
