"""perftune.analysis on the shipped data: each frame against a direct SQL query, each figure
drawn with data, `perftune report`'s page, and the notebooks executed."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from matplotlib.figure import Figure

from perftune import analysis
from perftune.analysis import plots
from perftune.store.db import Store

ROOT = Path(__file__).resolve().parents[1]
H100, H200 = "nvidia-h100-80gb-hbm3", "nvidia-h200"
ENERGY = ("gemm", "16x12288x4096", H100, "bf16")


@pytest.fixture(scope="module")
def store(shipped: Path) -> Iterator[Store]:
    with analysis.open_store(shipped) as opened:
        yield opened


def _one(store: Store, sql: str, params: list[object]) -> float:
    return float(store.query(sql, params).iloc[0, 0])


def test_open_store_builds_the_default_one_read_only() -> None:
    with analysis.open_store() as store:
        assert store.read_only
        assert _one(store, "SELECT count(*) FROM measurements", []) > 90_000


def test_measurements_filter_like_sql(store: Store) -> None:
    rows = analysis.measurements(store, family="gemm", device=H200, problem="1x11008x4096",
                                 dtype="bf16", status=None)
    expected = _one(store, "SELECT count(*) FROM measurements WHERE family = 'gemm' AND "
                    "device_id = ? AND shape = 'm=1,n=11008,k=4096' AND dtype = 'bf16'", [H200])
    assert len(rows) == expected > 0
    assert {"m", "n", "k", "config", "runtime_ms"} <= set(rows.columns)
    assert (rows["m"] == 1).all()


def test_best_configs_are_the_minimum_per_problem(store: Store) -> None:
    best = analysis.best_configs(store, family="gemm", device=H200)
    assert len(best) == _one(store, "SELECT count(DISTINCT (shape, dtype)) FROM measurements "
                             "WHERE family = 'gemm' AND device_id = ? AND status = 'ok'", [H200])
    row = best.iloc[0]
    assert row["runtime_ms"] == pytest.approx(_one(
        store, "SELECT min(runtime_ms) FROM measurements WHERE family = 'gemm' AND "
        "device_id = ? AND shape = ? AND dtype = ? AND status = 'ok'",
        [H200, row["shape"], row["dtype"]]))
    assert row["library_ms"] == pytest.approx(_one(
        store, "SELECT min(runtime_ms) FROM measurements WHERE family = 'gemm' AND "
        "device_id = ? AND shape = ? AND dtype = ? AND dataflow = 'cublas'",
        [H200, row["shape"], row["dtype"]]))
    assert (best["speedup"] >= 1 - 1e-12).all()
    every = analysis.best_configs(store)
    assert set(every["family"]) == {"gemm", "rmsnorm", "decode_attention"}


def test_dataflow_winners(store: Store) -> None:
    winners = analysis.dataflow_winners(store, family="decode_attention")
    assert len(winners) == _one(store, "SELECT count(DISTINCT (device_id, shape, dtype)) FROM "
                                "measurements WHERE family = 'decode_attention'", [])
    assert set(winners["variant"]) <= {"sdpa", "split", "no split"}
    row = winners.iloc[0]
    assert row["winner_ms"] == pytest.approx(_one(
        store, "SELECT min(runtime_ms) FROM measurements WHERE family = 'decode_attention' "
        "AND shape = ? AND dtype = ? AND status = 'ok'", [row["shape"], row["dtype"]]))
    assert (winners["margin"].dropna() >= 1).all()


def test_roofline_points(store: Store) -> None:
    points = analysis.roofline_points(store, family="rmsnorm", device=H100)
    assert len(points) == _one(store, "SELECT count(*) FROM measurements WHERE family = "
                               "'rmsnorm' AND device_id = ? AND status = 'ok'", [H100])
    row = points.iloc[0]
    assert row["achieved_gbs"] == pytest.approx(row["bytes"] / row["runtime_ms"] / 1e6)
    bandwidth = _one(store, "SELECT copy_bandwidth_gbs FROM devices WHERE device_id = ?", [H100])
    assert (points["copy_bandwidth_gbs"] == bandwidth).all()
    assert (points["attainable_tflops"] <= points["peak_tflops"]).all()


def test_predictions_on_heldout_problems(store: Store) -> None:
    predicted = analysis.predictions(store, "rmsnorm")
    heldout = analysis.heldout_problems(store, "rmsnorm")
    assert len(predicted) == heldout["rows"].sum()
    assert set(predicted["shape"]) == set(heldout["shape"])
    assert predicted["predicted_ms"].gt(0).all() and predicted["error"].abs().mean() < 0.5
    assert 0.5 < predicted["inside"].mean() <= 1


def test_time_energy_front(store: Store) -> None:
    family, problem, device, dtype = ENERGY
    front = analysis.time_energy_front(store, family, problem, device, dtype)
    assert len(front) == _one(store, "SELECT count(*) FROM measurements WHERE family = 'gemm' "
                              "AND device_id = ? AND shape = 'm=16,n=12288,k=4096' AND dtype = "
                              "'bf16' AND energy_method = 'busy-graph' AND energy_window_s >= 0.9",
                              [device])
    on = front[front["on_front"]]
    assert on.iloc[0]["runtime_ms"] == front["runtime_ms"].min()
    assert on.iloc[-1]["energy_per_call_j"] == front["energy_per_call_j"].min()
    assert on["energy_per_call_j"].is_monotonic_decreasing


def test_compare_devices(store: Store) -> None:
    wide = analysis.compare_devices(store, "gemm", "1x11008x4096", [H100, H200], dtype="bf16")
    best = wide[wide["dataflow"] == "best"].iloc[0]
    for device in (H100, H200):
        assert best[device] == pytest.approx(_one(
            store, "SELECT min(runtime_ms) FROM measurements WHERE family = 'gemm' AND "
            "device_id = ? AND shape = 'm=1,n=11008,k=4096' AND dtype = 'bf16' AND status = "
            "'ok'", [device]))
    assert best["speedup"] == pytest.approx(best[H100] / best[H200])
    every = analysis.compare_devices(store, "gemm")
    both = _one(store, "SELECT count(*) FROM (SELECT shape, dtype FROM measurements WHERE "
                "family = 'gemm' AND status = 'ok' AND device_id IN (?, ?) GROUP BY ALL "
                "HAVING count(DISTINCT device_id) = 2)", [H100, H200])
    assert both >= 400 and (every["dataflow"] == "best").sum() == both


def test_tuner_regret(store: Store) -> None:
    regret = analysis.tuner_regret(store, "rmsnorm", methods=("model", "random"),
                                   budgets=(2, 4), problems=2)
    assert len(regret) == 2 * 2 * 2
    assert ((regret["speed"] > 0) & (regret["speed"] <= 1 + 1e-12)).all()


FIGURES: dict[str, Callable[[Store], Figure]] = {
    "roofline": lambda s: plots.roofline(s),
    "winners_gemm": lambda s: plots.dataflow_map(s, "gemm", device=H100),
    "winners_decode_attention": lambda s: plots.dataflow_map(s, "decode_attention"),
    "sensitivity": lambda s: plots.config_sensitivity(s, "gemm", "64x11008x4096", H100, "fp16"),
    "predicted": lambda s: plots.predicted_vs_measured(s, "rmsnorm"),
    "tuners": lambda s: plots.tuner_regret(s, "rmsnorm", methods=("model", "random"),
                                           budgets=(2, 4), problems=2),
    "energy": lambda s: plots.time_energy(s, *ENERGY),
    "devices": lambda s: plots.device_comparison(s, "gemm"),
}


@pytest.mark.parametrize("name", list(FIGURES))
def test_plots_draw_data(store: Store, name: str) -> None:
    figure = FIGURES[name](store)
    assert isinstance(figure, Figure)
    drawn = sum(len(ax.collections) + len(ax.lines) for ax in figure.axes)
    assert figure.axes and drawn > 0
    points = sum(int(np.size(c.get_offsets())) for ax in figure.axes for c in ax.collections)
    points += sum(int(np.size(line.get_xdata())) for ax in figure.axes for line in ax.lines
                  if str(line.get_marker()) not in ("None", ""))
    assert points > 0


def test_plots_draw_on_a_given_axes(store: Store) -> None:
    figure = Figure()
    ax = figure.add_subplot()
    assert plots.device_comparison(store, "rmsnorm", ax=ax) is figure
    assert ax.collections


def test_report_writes_its_page(shipped: Path, tmp_path: Path,
                                cli: Callable[..., tuple[int, str, str]]) -> None:
    code, out, err = cli("report", "--db", shipped, "--out", tmp_path / "r", "--family",
                         "rmsnorm")
    assert code == 0, err
    page = tmp_path / "r" / "index.html"
    assert out.strip() == str(page)
    text = page.read_text()
    pngs = sorted((tmp_path / "r").glob("*.png"))
    assert len(pngs) >= 5
    assert all(f'src="{p.name}"' in text for p in pngs)
    code, _, err = cli("report", "--db", shipped, "--out", tmp_path / "x", "--family", "nope")
    assert code == 2 and "nope" in err


NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_notebooks_are_committed_without_outputs() -> None:
    import nbformat

    assert {p.name for p in NOTEBOOKS} >= {"walkthrough.ipynb", "cross_device.ipynb",
                                            "energy.ipynb", "new_family.ipynb"}
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") and not c.get("execution_count")
                   for c in notebook.cells if c.cell_type == "code"), path.name


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, shipped: Path, tmp_path: Path) -> None:
    """Each notebook executes top to bottom on the shipped data (its own PERFTUNE_HOME)."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    home = tmp_path / "home"
    home.mkdir()
    (home / "perftune.duckdb").write_bytes(shipped.read_bytes())
    env = {**os.environ, "PERFTUNE_HOME": str(home), "MPLBACKEND": "Agg"}
    env.pop("PERFTUNE_DB", None)
    client = NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=env)
    errors = [o for c in notebook.cells for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
