"""`perftune kernels`: the kernels the ``autotune`` decorator has tuned, their keys and picks."""

from __future__ import annotations

import argparse
import json
from typing import Any

from perftune.cli._common import db_option, make_console

COLUMNS = ("kernel", "source_hash", "device_id", "software_key", "tuning_key", "config",
           "runtime_ms", "configs", "measured", "ranked_by", "chosen_at")


def register(sub: Any) -> None:
    kernels = sub.add_parser(
        "kernels", help="list the kernels autotune has tuned, their keys and picks",
        description="List the choices of perftune's `autotune` decorator stored in the store: "
        "per kernel (name and source hash), device and software versions, each key's config, "
        "its runtime, and how many of the kernel's configs were measured for it.")
    kernels.add_argument("--kernel", default=None, help="only this kernel (by name)")
    kernels.add_argument("--json", action="store_true", help="print JSON")
    db_option(kernels)
    kernels.set_defaults(handler=cmd_kernels)


def cmd_kernels(args: argparse.Namespace) -> int:
    from perftune.store.db import Store

    sql = f"SELECT {', '.join(COLUMNS)} FROM autotune_choices"
    params: list[Any] = []
    if args.kernel:
        sql += " WHERE kernel = ?"
        params.append(args.kernel)
    sql += " ORDER BY kernel, device_id, chosen_at"
    with Store(args.db, read_only=True) as store:
        frame = store.query(sql, params)
        counts = store.query("SELECT kernel, source_hash, count(*) AS n, "
                             "count(DISTINCT tuning_key) AS keys FROM autotune_measurements "
                             "GROUP BY kernel, source_hash")
    if args.json:
        picks = [{**row, "tuning_key": json.loads(row["tuning_key"]),
                  "config": json.loads(row["config"]), "chosen_at": str(row["chosen_at"]),
                  "runtime_ms": None if row["runtime_ms"] != row["runtime_ms"]
                  else row["runtime_ms"]}
                 for row in frame.to_dict("records")]
        measured = {f"{r['kernel']}:{r['source_hash']}": {"measurements": int(r["n"]),
                                                          "keys": int(r["keys"])}
                    for r in counts.to_dict("records")}
        print(json.dumps({"kernels": sorted({p["kernel"] for p in picks}), "choices": picks,
                          "measured": measured}, indent=2))
        return 0
    from rich.table import Table

    table = Table(title="kernels tuned by perftune's autotune")
    for column in ("kernel", "source", "device", "key", "config", "ms", "measured", "ranked by"):
        table.add_column(column)
    for row in frame.itertuples(index=False):
        ms = "" if row.runtime_ms != row.runtime_ms else f"{row.runtime_ms:.4g}"
        table.add_row(row.kernel, row.source_hash[:10], row.device_id, row.tuning_key,
                      row.config, ms, f"{row.measured}/{row.configs}", row.ranked_by)
    if frame.empty:
        table.caption = "nothing tuned yet: decorate a kernel with perftune.tune.autotune"
    make_console().print(table)
    return 0
