"""`perftune evaluate`: a model's accuracy on the held-out problems, as a metrics table, PNG
plots (predicted vs measured, residuals by problem size, a roofline chart with the measured
points) and a small HTML page."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from perftune.errors import PerftuneInputError
from perftune.model.features import family_features, load_measurements
from perftune.model.metrics import runtime_metrics
from perftune.model.roofline import roofline_parts
from perftune.model.runtime import tuned_dataflows
from perftune.store.dataset import heldout_mask
from perftune.store.db import Store


def heldout_rows(store: Store, device: str | None = None, family: str = "gemm"
                 ) -> pd.DataFrame:
    rows = load_measurements(store, family=family, device=device)
    rows = rows[heldout_mask(rows, family)]
    if rows.empty:
        raise PerftuneInputError("no held-out problems measured on "
                                 f"{device or 'any GPU'} in {store.path}")
    return rows


def evaluate(predictor: Any, store: Store, out: Path, device: str | None = None
             ) -> dict[str, Any]:
    """Write metrics.json, three PNGs and index.html under ``out``; return the metrics."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    family = predictor.family
    rows = heldout_rows(store, device, family.name)
    predicted = predictor.predict(store, rows)
    metrics: dict[str, Any] = {}
    for device_id, group in predicted.groupby("device_id"):
        metrics[str(device_id)] = runtime_metrics(group, group["predicted_ms"].to_numpy(),
                                                  tuned_dataflows(family))
        if "low_ms" in group:
            inside = (group["runtime_ms"] >= group["low_ms"]) & (group["runtime_ms"]
                                                                 <= group["high_ms"])
            metrics[str(device_id)]["interval_coverage"] = float(inside.mean())
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({"model": predictor.meta, "metrics": metrics},
                                                 indent=2, default=str) + "\n")
    truth, guess = predicted["runtime_ms"], predicted["predicted_ms"]

    fig, ax = plt.subplots(figsize=(5, 5))
    for dataflow, group in predicted.groupby("dataflow"):
        ax.scatter(group["runtime_ms"], group["predicted_ms"], s=4, alpha=0.5, label=dataflow)
    bounds = [min(truth.min(), guess.min()), max(truth.max(), guess.max())]
    ax.plot(bounds, bounds, "k--", lw=1)
    ax.set(xscale="log", yscale="log", xlabel="measured ms", ylabel="predicted ms",
           title="held-out problems")
    ax.legend()
    fig.savefig(out / "predicted_vs_measured.png", dpi=120, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(predicted["flops"], np.log(guess / truth), s=4, alpha=0.4)
    ax.axhline(0, color="k", lw=1)
    ax.set(xscale="log", xlabel="problem FLOPs", ylabel="log(predicted / measured)",
           title="residuals by problem size")
    fig.savefig(out / "residuals_by_size.png", dpi=120, bbox_inches="tight")
    plt.close(fig)

    features = family_features(family, predicted)
    parts = roofline_parts(features, family)
    intensity = 2.0 ** features["log_intensity"]
    achieved = predicted["flops"] / (truth * 1e-3) / 1e12
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(intensity, achieved, s=4, alpha=0.4, c=(parts["bound"] == "compute"),
               cmap="coolwarm")
    peak, bandwidth = features["peak_tflops"].max(), features["bandwidth_gbs"].max()
    x = np.logspace(np.log10(intensity.min()), np.log10(intensity.max()), 100)
    ax.plot(x, np.minimum(peak, x * bandwidth / 1e3), "k-", lw=1, label="measured ceilings")
    ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOP/byte)",
           ylabel="achieved TFLOP/s", title="roofline with measured points")
    ax.legend()
    fig.savefig(out / "roofline.png", dpi=120, bbox_inches="tight")
    plt.close(fig)

    table = pd.DataFrame(metrics).T.round(4).to_html()
    page = (f"<html><head><title>perftune model report</title></head><body>"
            f"<h1>perftune model report</h1><p>model: {html.escape(str(predictor.meta))}</p>"
            f"<h2>held-out problems</h2>{table}"
            + "".join(f'<h3>{name}</h3><img src="{name}.png">' for name in
                      ("predicted_vs_measured", "residuals_by_size", "roofline"))
            + "</body></html>\n")
    (out / "index.html").write_text(page)
    return metrics
