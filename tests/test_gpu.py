"""On a GPU only (marked ``gpu``; skipped elsewhere): the real collection path."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_gpu_sweep_checks_times_and_measures_energy(tmp_path):
    from perftune.collect.problems import Problem
    from perftune.collect.sweep import Collector, SweepSpec
    from perftune.store import Store

    problem = Problem.of("fp16", m=256, n=512, k=1000)
    spec = SweepSpec(family="gemm", problems=[problem], sample=2, energy=True,
                     energy_window_s=0.3, interpret=False)
    with Store(tmp_path / "gpu.duckdb") as store:
        summary = Collector(store, spec).run()
        rows = store.query("SELECT * FROM measurements")
        device = store.device(summary.device_id)
    assert summary.device_kind == "gpu" and device["sm_count"] > 0
    assert len(rows) == 5  # cublas + 2 triton + 2 split-K
    ok = rows[rows.status == "ok"]
    assert len(ok) == 5, rows[["dataflow", "config", "status", "error"]]
    assert (ok.timer == "cuda_event_queued").all()
    assert (ok.rel_error < 5e-3).all()
    assert (ok.runtime_ms > 0).all() and (ok.rounds >= 2).all()
    assert (ok.energy_per_call_j > 0).all()
    assert ok.avg_power_w.between(20, 2000).all()


def test_energy_only_measures_stored_rows_into_its_campaign(tmp_path):
    """--energy-only fills the energy of stored rows, keeps their timings, and moves them to
    its campaign: an export of the campaigns since a time (the device delta) carries them."""
    import dataclasses

    from perftune.collect.problems import Problem
    from perftune.collect.sweep import Collector, SweepSpec
    from perftune.store import Store

    problem = Problem.of("fp16", m=128, n=256, k=512)
    spec = SweepSpec(family="gemm", problems=[problem], dataflows=["triton"], sample=2,
                     interpret=False)
    with Store(tmp_path / "energy_only.duckdb") as store:
        Collector(store, spec).run()
        before = store.query("SELECT key, runtime_ms, campaign_id FROM measurements")
        energy_only = dataclasses.replace(spec, energy_only=True, energy_window_s=0.3)
        summary = Collector(store, energy_only).run()
        after = store.query("SELECT key, runtime_ms, campaign_id, energy_per_call_j "
                            "FROM measurements").merge(before, on="key",
                                                       suffixes=("", "_before"))
        campaigns = store.query("SELECT campaign_id FROM campaigns ORDER BY started_at")
    assert summary.written == 2 and (after.energy_per_call_j > 0).all()
    assert (after.runtime_ms == after.runtime_ms_before).all()
    assert (after.campaign_id == campaigns.campaign_id.iloc[-1]).all()
    assert (after.campaign_id != after.campaign_id_before).all()


def test_energy_window_keeps_the_gpu_busy(tmp_path):
    """Energy per call must match power x GPU time per call: a window that leaves the GPU
    idle between batches dilutes the power and inflates the energy per call (seen before)."""
    from perftune.collect.problems import Problem
    from perftune.collect.sweep import Collector, SweepSpec
    from perftune.store import Store

    problem = Problem.of("fp16", m=4096, n=4096, k=4096)
    spec = SweepSpec(family="gemm", problems=[problem], dataflows=["cublas"], energy=True,
                     energy_window_s=0.5, interpret=False)
    with Store(tmp_path / "energy.duckdb") as store:
        Collector(store, spec).run()
        row = store.query("SELECT * FROM measurements").iloc[0]
    busy_power = row.energy_per_call_j / (row.runtime_ms * 1e-3)
    assert 0.8 < busy_power / row.avg_power_w < 1.25, (busy_power, row.avg_power_w)
    assert row.avg_power_w > 300  # a large fp16 GEMM on an H100/H200 draws 450-700 W


def test_calibration_measures_plausible_ceilings():
    from perftune.collect.device import calibrate

    ceilings = calibrate(size=4096, copy_bytes=2**30)
    assert 50 < ceilings["peak_tflops_bf16"] < 3000
    assert 300 < ceilings["copy_bandwidth_gbs"] < 20000


def _doubling_kernel():
    """out = 2 x, in BLOCK-element programs: a kernel of no family for the decorator."""
    import triton
    import triton.language as tl

    @triton.jit
    def scale_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        tl.store(out_ptr + offs, 2.0 * tl.load(x_ptr + offs, mask=mask), mask=mask)

    return scale_kernel


def _doubles(tuned, n):
    """Call the tuned doubling kernel on ``n`` elements and check its output."""
    import triton

    x = torch.randn(n, device="cuda")
    out = torch.empty_like(x)
    tuned[lambda meta: (triton.cdiv(n, meta["BLOCK"]),)](x, out, n)
    torch.cuda.synchronize()
    assert torch.equal(out, 2 * x)


def test_autotune_energy_objective_picks_the_least_energy_config(tmp_path):
    import duckdb
    import triton

    from perftune.tune.autotune import autotune

    configs = [triton.Config({"BLOCK": b}, num_warps=w) for b in (256, 1024) for w in (1, 4)]
    db = tmp_path / "energy.duckdb"
    tuned = autotune(configs, key=["n"], objective="energy", energy_window_s=0.2, db=db,
                     family=False, name="scale_energy")(_doubling_kernel())
    _doubles(tuned, 1 << 24)
    tuned.flush()  # the key's records are written in the background
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute("SELECT config, runtime_ms, energy_per_call_j FROM "
                       "autotune_measurements").fetchall()
    choice = con.execute("SELECT config, objective, energy_per_call_j FROM "
                         "autotune_choices").fetchall()
    con.close()
    assert len(rows) == 4 and all(r[1] > 0 and r[2] > 0 for r in rows)
    least = min(rows, key=lambda r: r[2])
    assert choice == [(least[0], "energy", least[2])]


def test_autotune_compiles_at_once_screens_and_times_finalists_in_full(tmp_path):
    import triton

    from perftune.tune.autotune import autotune

    configs = [triton.Config({"BLOCK": b}, num_warps=w)
               for b in (128, 256, 512, 1024, 2048) for w in (1, 2, 4, 8)]
    tuned = autotune(configs, key=["n"], db=tmp_path / "s.duckdb", family=False,
                     name="doubling", compile_workers=4)(_doubling_kernel())
    _doubles(tuned, 1 << 22)
    history, report = tuned.history[-1], dict(tuned.compile_report)
    left = report.pop("left_running")
    assert report == {"compiled": 20, "children_failed": 0, "child_error": None, "ahead": 0}
    assert history["left_out"] == left <= 10  # at most the slower half compiles on
    assert history["measured"] == 20 - left  # no model yet: every compiled config screened
    screened = sorted(ms for i, (_, ms) in tuned._screened.items()
                      if i not in tuned._quick_only)  # the quick run kept the budget's 8
    assert len(screened) == 8
    ties = [ms for ms in screened[:3] if ms <= screened[0] * 1.05]  # the default tie_margin
    assert len(tuned.configs_timings) == len(ties)
    # a lone finalist has nothing to be told from: its screen time stands
    assert history["timed_in_full"] == (len(ties) if len(ties) > 1 else 0)
    assert tuned.best_config in tuned.configs_timings
    _doubles(tuned, 1 << 21)  # a new key: the configs left out earlier are ready, or wait
    assert tuned.history[-1]["measured"] + tuned.history[-1]["left_out"] == 20


def test_trimmed_spin_times_a_matmul_like_the_whole_lead():
    """After its first repetitions, the timer spins only what the call's GPU work leaves short
    of the lead; the call times the same."""
    from perftune.collect.timers.cuda_events import CudaEventTimer

    a = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
    out = torch.empty_like(a)

    def call():
        torch.matmul(a, a, out=out)

    medians: dict[bool, list[float]] = {}
    for trim in (False, True, False, True):
        timer = CudaEventTimer(trim_lead=trim, min_reps=100, max_reps=100)
        medians.setdefault(trim, []).append(timer.time(call).median_ms)
    whole, trimmed = min(medians[False]), min(medians[True])
    assert abs(trimmed / whole - 1) < 0.05, medians
    assert timer._own_ms(call) is not None and timer._own_ms(lambda: None) is None
