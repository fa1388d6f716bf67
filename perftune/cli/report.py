"""``perftune report``: the analysis figures of the store as PNGs in one HTML page."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from perftune.cli._common import db_option


def register(sub: Any) -> None:
    report = sub.add_parser(
        "report", help="the store's analysis figures (roofline, winners, model, tuners, "
        "energy, devices) as one HTML page",
        description="Draw the analysis figures of perftune.analysis.plots for each family "
        "(or --family)\nas PNGs and write index.html beside them. A family without a model "
        "gets a small\none trained for the page (seconds; not saved).",
        epilog="example:\n  perftune report --out report --family rmsnorm",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    db_option(report)
    report.add_argument("--out", type=Path, default=Path("perftune-report"),
                        help="folder for index.html and the PNGs (default: perftune-report)")
    report.add_argument("--family", action="append", default=None,
                        help="a family to draw (repeatable; default: every family stored)")
    report.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from perftune.analysis.report import write_report
    from perftune.store.db import Store

    with Store(args.db, read_only=True) as store:
        page = write_report(store, args.out, args.family,
                            announce=lambda line: print(line, file=sys.stderr))
    print(page)
    return 0
