"""One HTML page of the analysis figures (``perftune report``): each figure a PNG beside it."""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from pathlib import Path

from matplotlib.figure import Figure

from perftune.analysis import frames, plots
from perftune.errors import PerftuneInputError
from perftune.store.db import Store


def figures(store: Store, family: str) -> list[tuple[str, str, Callable[[], Figure]]]:
    """(file stem, caption, figure maker) of every figure of ``family`` the store can draw."""
    devices = frames.best_configs(store, family=family)["device_id"].value_counts()
    held = frames.heldout_problems(store, family)
    device = str(held["device_id"].iloc[0] if not held.empty else devices.index[0])
    held = held[held["device_id"] == device]
    listed: list[tuple[str, str, Callable[[], Figure]]] = [
        (f"{family}_roofline", f"{family} rows against each device's measured ceilings",
         lambda: plots.roofline(store, families=[family])),
        (f"{family}_winners", f"{family}: the winning dataflow per problem on {device}",
         lambda: plots.dataflow_map(store, family, device=device)),
    ]
    if not held.empty:
        first = held.iloc[0]
        listed += [
            (f"{family}_sensitivity", f"every config of {first['shape']} {first['dtype']}",
             lambda: plots.config_sensitivity(store, family, first["shape"], device,
                                               first["dtype"])),
            (f"{family}_predicted", f"{family} model on held-out problems",
             lambda: plots.predicted_vs_measured(store, family)),
            (f"{family}_tuners", f"{family} tuners replayed on held-out problems",
             lambda: plots.tuner_regret(store, family, device=device, problems=3)),
        ]
    if not frames.energy_problems(store, family).empty:
        listed.append((f"{family}_energy", f"{family}: time against energy, Pareto front",
                       lambda: plots.time_energy(store, family)))
    if devices.size > 1:
        listed.append((f"{family}_devices", f"{family}: the same problems on each device",
                       lambda: plots.device_comparison(store, family)))
    return listed


def write_report(store: Store, out: str | Path, families: Sequence[str] | None = None,
                 announce: Callable[[str], object] = lambda _: None) -> Path:
    """Write every figure of ``families`` (default: every family in the store) as PNGs and
    ``index.html`` under ``out``; returns the page's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    known = frames.families(store)
    chosen = list(families) if families else known
    unknown = [f for f in chosen if f not in known]
    if unknown:
        raise PerftuneInputError(f"no measurements of {unknown} in {store.path}; known: "
                                 f"{', '.join(known)}")
    sections = []
    for family in chosen:
        items = []
        for stem, caption, make in figures(store, family):
            announce(f"drawing {stem}.png")
            figure = make()
            figure.savefig(out / f"{stem}.png", dpi=90)
            items.append(f'<figure><img src="{stem}.png" alt="{html.escape(caption)}">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        sections.append(f"<h2>{html.escape(family)}</h2>\n" + "\n".join(items))
    page = out / "index.html"
    page.write_text(
        "<!doctype html>\n<html><head><meta charset='utf-8'><title>perftune report</title>"
        "<style>body{font-family:sans-serif;max-width:1300px;margin:auto}"
        "figure{display:inline-block;margin:8px}img{max-width:620px}</style></head><body>"
        f"<h1>perftune report</h1><p>{html.escape(str(store.path))}</p>\n"
        + "\n".join(sections) + "\n</body></html>\n")
    return page
