"""Figures of the store, one function each: every one takes an open store (or a frame it
computed), draws on ``ax`` when given (else on a new figure) and returns the Figure.

>>> from perftune.analysis import open_store, plots
>>> fig = plots.roofline(open_store())
>>> fig.savefig("roofline.png")
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

from perftune.analysis import frames
from perftune.collect.families import load_family
from perftune.store.db import Store

FAMILY_COLOURS = {"gemm": "tab:blue", "rmsnorm": "tab:green", "decode_attention": "tab:red"}
_PALETTE = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]


def _axes(ax: Axes | None, size: tuple[float, float] = (6.4, 4.4)) -> tuple[Figure, Axes]:
    if ax is not None:
        figure = ax.get_figure()
        assert isinstance(figure, Figure)
        return figure, ax
    figure = Figure(figsize=size, layout="constrained")
    return figure, figure.add_subplot()


def _short(device: str) -> str:
    return device.removeprefix("nvidia-").split("-")[0].upper()


def roofline(store: Store, device: str | None = None, *, families: Sequence[str] | None = None,
             ax: Axes | None = None, max_points: int = 20_000) -> Figure:
    """Achieved TFLOP/s against arithmetic intensity on each device (one panel per device,
    or ``device`` on ``ax``), the measured compute and bandwidth ceilings drawn, points
    coloured by family (at most ``max_points`` per family and device, sampled)."""
    points = frames.roofline_points(store, device=device)
    if families:
        points = points[points["family"].isin(families)]
    names = [device] if device else sorted(points["device_id"].unique())
    if ax is not None:
        figure, axes = _axes(ax)
        panels = [axes]
        names = names[:1]
    else:
        figure = Figure(figsize=(6.0 * len(names), 4.6), layout="constrained")
        panels = list(figure.subplots(1, len(names), squeeze=False)[0])
    for name, panel in zip(names, panels, strict=True):
        rows = points[points["device_id"] == name]
        for family, group in rows.groupby("family"):
            if len(group) > max_points:
                group = group.sample(max_points, random_state=0)
            panel.scatter(group["intensity"], group["achieved_tflops"], s=3, alpha=0.35,
                          color=FAMILY_COLOURS.get(str(family)), label=str(family),
                          rasterized=True)
        peak = float(rows["peak_tflops"].max())
        bandwidth = float(rows["copy_bandwidth_gbs"].max())
        x = np.logspace(np.log10(max(rows["intensity"].min() / 2, 1e-2)),
                        np.log10(rows["intensity"].max() * 2), 200)
        panel.plot(x, np.minimum(peak, x * bandwidth / 1e3), color="black", lw=1.2,
                   label=f"ceilings: {peak:.0f} TFLOP/s, {bandwidth:.0f} GB/s")
        panel.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOP/byte)",
                  ylabel="achieved TFLOP/s", title=f"roofline, {_short(name)}")
        panel.legend(loc="lower right", fontsize=8, markerscale=3)
    return figure


def _winner_axes(family: str) -> tuple[str, str, str | None]:
    return {"gemm": ("m", "k", "n"), "decode_attention": ("batch", "context", None)}.get(
        family, ("m", "n", None))


def dataflow_map(store: Store, family: str = "gemm", *, device: str | None = None,
                 dtype: str | None = None, fixed: int | None = None,
                 ax: Axes | None = None) -> Figure:
    """The winning dataflow of each measured problem over two sizes: GEMM over m and k at
    fixed n (``fixed``, default the n with most problems), decode attention split vs no split
    (vs SDPA) over batch and context, other families over their first two sizes."""
    winners = frames.dataflow_winners(store, family=family, device=device)
    if dtype:
        winners = winners[winners["dtype"] == dtype]
    x, y, pinned = _winner_axes(family)
    title = f"{family} winners"
    if pinned:
        common = winners.loc[winners[pinned] >= 256, pinned].value_counts()  # LLM layers
        fixed = fixed or int((common if not common.empty else winners[pinned].value_counts()
                              ).index[0])
        winners = winners[winners[pinned] == fixed]
        title += f" at {pinned}={fixed}"
    figure, ax = _axes(ax)
    rng = np.random.default_rng(0)
    jitter = rng.uniform(0.9, 1.1, size=(2, len(winners)))  # same cell: several problems
    for i, (variant, group) in enumerate(winners.groupby("variant")):
        mask = (winners["variant"] == variant).to_numpy()
        ax.scatter(group[x] * jitter[0][mask], group[y] * jitter[1][mask], s=40,
                   color=_PALETTE[i % len(_PALETTE)], label=f"{variant} ({len(group)})",
                   alpha=0.8, edgecolor="white", linewidth=0.5)
    ax.set(xscale="log", yscale="log", xlabel=x, ylabel=y, title=title)
    ax.legend(fontsize=8)
    return figure


def config_sensitivity(store: Store, family: str, problem: frames.ProblemLike, device: str,
                       dtype: str | None = None, *, ax: Axes | None = None) -> Figure:
    """Every measured config's runtime of one problem, fastest first, coloured by dataflow;
    the library's runtime marked."""
    rows = frames.config_runtimes(store, family, problem, device, dtype)
    figure, ax = _axes(ax)
    library = load_family(family).library_dataflow
    for i, (dataflow, group) in enumerate(rows.groupby("dataflow")):
        if dataflow == library:
            continue
        ax.scatter(group["rank"], group["runtime_ms"], s=6, color=_PALETTE[i % len(_PALETTE)],
                   alpha=0.6, label=f"{dataflow} ({len(group)})")
    for _, row in rows[rows["library"]].iterrows():
        ax.axhline(row["runtime_ms"], color="black", ls="--", lw=1)
        ax.scatter([row["rank"]], [row["runtime_ms"]], marker="*", s=150, color="black",
                   zorder=3, label=f"{library} (rank {row['rank']})")
    first = rows.iloc[0]
    ax.set(yscale="log", xlabel="config rank (fastest first)", ylabel="runtime (ms)",
           title=f"{family} {first['shape']} {first['dtype']}, {_short(device)}")
    ax.legend(fontsize=8)
    return figure


def predicted_vs_measured(store: Store | None = None, family: str = "gemm", *,
                          device: str | None = None, predicted: pd.DataFrame | None = None,
                          ax: Axes | None = None) -> Figure:
    """The model's runtime against the measured one on held-out problems, each with its 90%
    interval (:func:`perftune.analysis.predictions`, or the frame ``predicted``)."""
    if predicted is None:
        assert store is not None, "give a store or a predictions frame"
        predicted = frames.predictions(store, family, device=device)
    figure, ax = _axes(ax)
    if "low_ms" in predicted:
        inside = predicted["inside"].to_numpy(bool)
        for mask, colour, label in ((inside, "tab:blue", "measured inside the 90% interval"),
                                    (~inside, "tab:red", "outside")):
            part = predicted[mask]
            ax.errorbar(part["runtime_ms"], part["predicted_ms"],
                        yerr=[part["predicted_ms"] - part["low_ms"],
                              part["high_ms"] - part["predicted_ms"]],
                        fmt="o", ms=2, lw=0.4, alpha=0.4, color=colour,
                        label=f"{label} ({mask.mean():.0%})")
    else:
        ax.scatter(predicted["runtime_ms"], predicted["predicted_ms"], s=3)
    low = float(min(predicted["runtime_ms"].min(), predicted["predicted_ms"].min()))
    high = float(max(predicted["runtime_ms"].max(), predicted["predicted_ms"].max()))
    ax.plot([low, high], [low, high], color="black", lw=1)
    mape = float(predicted["error"].abs().mean())
    ax.set(xscale="log", yscale="log", xlabel="measured (ms)", ylabel="predicted (ms)",
           title=f"{family}, held-out problems: MAPE {mape:.1%}")
    ax.legend(fontsize=8)
    return figure


def tuner_regret(store: Store | None = None, family: str = "gemm", *,
                 device: str | None = None, methods: Sequence[str] = ("model", "tpe", "random"),
                 budgets: Sequence[int] = (2, 4, 8), problems: int = 4,
                 regret: pd.DataFrame | None = None, ax: Axes | None = None) -> Figure:
    """Each tuner method's mean speed (best measured / best the tuner found) over held-out
    problems replayed, per budget (:func:`perftune.analysis.tuner_regret`, or the frame
    ``regret``)."""
    if regret is None:
        assert store is not None, "give a store or a tuner_regret frame"
        regret = frames.tuner_regret(store, family, device=device, methods=methods,
                                     budgets=budgets, problems=problems)
    figure, ax = _axes(ax)
    mean = regret.groupby(["method", "budget"])["speed"].mean().reset_index()
    for i, (method, group) in enumerate(mean.groupby("method", sort=False)):
        ax.plot(group["budget"], group["speed"], marker="o", color=_PALETTE[i % len(_PALETTE)],
                label=str(method))
    ax.axhline(1.0, color="black", lw=0.8, ls=":")
    problems_n = regret.groupby(["dtype", "shape"]).ngroups
    ax.set(xscale="log", xlabel="budget (measurements)", ylabel="speed (best / tuned)",
           title=f"{family} tuners by replay, {problems_n} held-out problems")
    budgets_run = sorted(regret["budget"].unique())
    ax.set_xticks(budgets_run, [str(b) for b in budgets_run])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.legend(fontsize=8)
    return figure


def time_energy(store: Store, family: str = "gemm", problem: frames.ProblemLike | None = None,
                device: str | None = None, dtype: str | None = None, *,
                ax: Axes | None = None) -> Figure:
    """Runtime against energy per call of one problem's trusted-energy rows, the Pareto front
    joined (:func:`perftune.analysis.time_energy_front`)."""
    rows = frames.time_energy_front(store, family, problem, device, dtype)
    figure, ax = _axes(ax)
    for i, (dataflow, group) in enumerate(rows.groupby("dataflow")):
        ax.scatter(group["runtime_ms"], group["energy_per_call_j"] * 1e3, s=18,
                   color=_PALETTE[i % len(_PALETTE)], label=str(dataflow), alpha=0.7)
    front = rows[rows["on_front"]]
    ax.plot(front["runtime_ms"], front["energy_per_call_j"] * 1e3, color="black", marker="o",
            mfc="none", ms=9, lw=1, drawstyle="steps-post", label=f"front ({len(front)})")
    first = rows.iloc[0]
    ax.set(xscale="log", yscale="log", xlabel="runtime (ms)", ylabel="energy per call (mJ)",
           title=f"{family} {first['shape']} {first['dtype']}, {_short(first['device_id'])}")
    ax.legend(fontsize=8)
    return figure


def device_comparison(store: Store, family: str = "gemm",
                      devices: Sequence[str] | None = None, *, ax: Axes | None = None
                      ) -> Figure:
    """The best runtime of each problem measured on two devices, one against the other, the
    diagonal and the geometric-mean speedup drawn (:func:`perftune.analysis.compare_devices`)."""
    wide = frames.compare_devices(store, family, devices=devices)
    names = [c for c in wide.columns if c not in ("dtype", "shape", "dataflow", "speedup")]
    first, last = names[0], names[-1]
    best = wide[wide["dataflow"] == "best"]
    figure, ax = _axes(ax)
    ax.scatter(best[first], best[last], s=22, color="tab:purple", alpha=0.8,
               label=f"{len(best)} problems")
    low = float(min(best[first].min(), best[last].min())) / 1.2
    high = float(max(best[first].max(), best[last].max())) * 1.2
    ax.plot([low, high], [low, high], color="black", lw=1, label="same time")
    geomean = float(np.exp(np.log(best["speedup"]).mean()))
    ax.plot([low, high], [low / geomean, high / geomean], color="tab:purple", ls="--", lw=1,
            label=f"geomean speedup {geomean:.2f}x")
    ax.set(xscale="log", yscale="log", xlabel=f"{_short(first)} best (ms)",
           ylabel=f"{_short(last)} best (ms)", title=f"{family}: {_short(first)} vs "
           f"{_short(last)}, same problems")
    ax.legend(fontsize=8)
    return figure

