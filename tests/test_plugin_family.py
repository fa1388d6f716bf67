"""A family plugged in from outside perftune (tests/plugin_family.py) is measured, modelled,
tuned and served without editing any perftune file: only ``--family package.module:Class``."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from perftune.store.db import Store

PLUGIN = "tests.plugin_family:AxpyFamily"
Cli = Callable[..., tuple[int, str, str]]


def test_a_plugged_in_family_is_collected_and_tuned_live(db: Path, cli: Cli) -> None:
    code, _, err = cli("collect", "--family", PLUGIN, "--problem", "1000", "--problem",
                       "n=4099", "--all", "--interpret", "--no-progress", "--db", db)
    assert code == 0, err
    with Store(db, read_only=True) as store:
        rows = store.query("SELECT family, dataflow, status, sizes FROM measurements")
    assert set(rows["family"]) == {"axpy"} and set(rows["status"]) == {"ok"}
    assert len(rows) == 2 * (1 + 9)  # torch + the 9 Triton configs, per problem
    assert {json.loads(s)["n"] for s in rows["sizes"]} == {1000, 4099}
    code, out, err = cli("tune", "--family", PLUGIN, "--backend", "live", "--method",
                         "random", "--budget", "3", "--problem", "2048", "--db", db, "--json")
    assert code == 0, err
    answer = json.loads(out)
    assert answer["family"] == "axpy" and answer["measurements"] == 3
    assert answer["library_dataflow"] == "torch"
    code, _, err = cli("tune", "--family", PLUGIN, "--backend", "live", "--problem", "n=0",
                       "--db", db)
    assert code == 2 and "positive" in err


def test_a_plugged_in_family_is_modelled_and_answered(db: Path, shipped: Path,
                                                      tmp_path: Path, cli: Cli) -> None:
    """The interpreter's rows, stored again under a calibrated GPU of the shipped store (the
    CPU has no ceilings to model against), train the family's model, which ranks its configs
    for an unseen problem; the same model answers over HTTP through the service's logic."""
    code, _, err = cli("collect", "--family", PLUGIN, "--problem", "1000", "--problem",
                       "3000", "--problem", "5000", "--problem", "9000", "--all",
                       "--interpret", "--no-progress", "--db", db)
    assert code == 0, err
    store_path = tmp_path / "with_plugin.duckdb"
    store_path.write_bytes(shipped.read_bytes())
    with Store(db, read_only=True) as source:
        rows = source.query("SELECT * FROM measurements")
    rows = rows.assign(device_id="nvidia-h200", key=rows["key"] + "-as-gpu")
    with Store(store_path) as store:
        assert store.insert("measurements", rows) == len(rows)
    model = tmp_path / "axpy_runtime.skops"
    code, out, err = cli("fit", "--family", PLUGIN, "--db", store_path, "--trees", "5",
                         "--out", model)
    assert code == 0, err
    code, out, err = cli("predict", "--family", PLUGIN, "--db", store_path, "--model", model,
                         "--problem", "7000", "--device", "nvidia-h200", "--json")
    assert code == 0, err
    ranked = json.loads(out)
    assert {r["dataflow"] for r in ranked} <= {"torch", "triton"} and len(ranked) == 10
    assert all(r["predicted_ms"] > 0 for r in ranked)
    code, out, err = cli("fit", "--family", PLUGIN, "--db", store_path, "--trees", "3")
    assert code == 0 and "axpy_runtime.skops" in out, err  # the user's models, by its name
    code, out, err = cli("tune", "--family", PLUGIN, "--db", store_path, "--problem", "5000",
                         "--device", "nvidia-h200", "--budget", "4", "--json")
    assert code == 0, err
    assert json.loads(out)["measurements"] <= 4
