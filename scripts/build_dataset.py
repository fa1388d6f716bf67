"""Build the shipped dataset (perftune/data/dataset/) from perftune stores of GPU measurements.

    python -m scripts.build_dataset STORE [STORE ...]          # rewrite perftune/data/dataset/
    python -m scripts.build_dataset --out DIR STORE [STORE ...]  # or write it elsewhere
    python -m scripts.build_dataset --merge-into STORE DELTA [DELTA ...]
    python -m scripts.build_dataset --merge-into STORE --replace DELTA
    python -m scripts.build_dataset --export-delta "YYYY-MM-DD HH:MM:SS" STORE DELTA

Merges the stores (GPU devices only: interpreter rows never ship), marks campaigns that a time
limit ended without a clean finish as interrupted, counts what each campaign wrote, and writes
Parquet plus a manifest (devices, software, dates, commands, problem files, counts per status)
through `Store.export_parquet`. The held-out problems are perftune/data/problems/heldout.csv.

``--merge-into STORE``: only merge the other stores into STORE (and compact it, as ``perftune
db compact`` does); with ``--replace`` their measurements replace stored ones of the same key,
as after ``perftune collect --retime-below``. ``--export-delta SINCE``, on the GPU machine:
copy the campaigns started since SINCE (UTC) and their rows into a new, small store, to bring
back instead of the whole store. docs/gpu.md shows the whole round trip.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from perftune.settings import DATASET_DIR, HELDOUT_FILE, PACKAGE_DATA, PROBLEMS_DIR
from perftune.store.dataset import heldout_problems
from perftune.store.db import Store, compact_store

REPOSITORY = PACKAGE_DATA.parents[1]  # the manifest names files relative to the checkout


def merge(sources: list[Path], target: Path, *, replace: bool = False) -> None:
    with Store(target) as store:
        for source in sources:
            store.con.execute(f"ATTACH '{source}' AS src (READ_ONLY)")
            for table in ("devices", "campaigns", "measurements"):
                where = "" if table == "campaigns" else (
                    " WHERE device_id IN (SELECT device_id FROM src.devices WHERE kind = 'gpu')")
                verb = "REPLACE" if replace and table == "measurements" else "IGNORE"
                store.con.execute(f"INSERT OR {verb} INTO {table} BY NAME SELECT * FROM "
                                  f"src.{table}" + where)
            store.con.execute("DETACH src")
        store.con.execute("""
            UPDATE campaigns c SET
              written = (SELECT count(*) FROM measurements m WHERE m.campaign_id = c.campaign_id),
              status = CASE WHEN status = 'running' THEN 'interrupted' ELSE status END""")
        store.con.execute("DELETE FROM campaigns WHERE device_id NOT IN "
                          "(SELECT device_id FROM devices WHERE kind = 'gpu')")


def export_delta(store: Path, delta: Path, since: str) -> int:
    """Copy the campaigns started since ``since`` and their measurements into ``delta``."""
    import duckdb

    con = duckdb.connect(str(delta))
    con.execute(f"ATTACH '{store}' AS src (READ_ONLY)")
    con.execute("CREATE TABLE devices AS SELECT * FROM src.devices")
    con.execute("CREATE TABLE campaigns AS SELECT * FROM src.campaigns WHERE started_at >= ?",
                [since])
    con.execute("CREATE TABLE measurements AS SELECT * FROM src.measurements WHERE campaign_id "
                "IN (SELECT campaign_id FROM campaigns)")
    rows = con.execute("SELECT count(*) FROM measurements").fetchone()
    con.execute("CHECKPOINT")
    con.close()
    return int(rows[0]) if rows else 0


def manifest_extra(store: Store) -> dict[str, object]:
    devices = store.query("SELECT * FROM devices ORDER BY device_id")
    software = store.query("SELECT device_id, software_key, min(measured_at)::DATE AS first, "
                           "max(measured_at)::DATE AS last, count(*) AS rows "
                           "FROM measurements GROUP BY ALL ORDER BY ALL")
    statuses = store.query("SELECT device_id, family, status, count(*) AS n FROM measurements "
                           "GROUP BY ALL ORDER BY ALL")
    commands = store.query("SELECT device_id, command, status, written FROM campaigns "
                           "ORDER BY started_at")
    return {
        "devices": json.loads(devices.to_json(orient="records", date_format="iso")),
        "software": json.loads(software.to_json(orient="records", date_format="iso")),
        "counts_per_status": json.loads(statuses.to_json(orient="records")),
        "campaigns": json.loads(commands.to_json(orient="records")),
        "problem_files": sorted(str(p.relative_to(REPOSITORY))
                                for p in PROBLEMS_DIR.glob("*.csv")),
        "heldout_file": str(HELDOUT_FILE.relative_to(REPOSITORY)),
        "heldout_problems": len(heldout_problems()),
        "collected_with": "the perftune collect commands listed with each campaign "
                          "(docs/dataset.md)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stores", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=DATASET_DIR)
    parser.add_argument("--merge-into", type=Path, metavar="STORE",
                        help="only merge the other stores into STORE (e.g. a GPU run's delta "
                             "into the store so far), export nothing")
    parser.add_argument("--replace", action="store_true",
                        help="with --merge-into: measurements of a key already in STORE are "
                             "replaced by the delta's (re-timed rows)")
    parser.add_argument("--export-delta", metavar="SINCE",
                        help="copy the campaigns started since SINCE from the first store into "
                             "the second (a new file), with their rows")
    args = parser.parse_args()
    if args.export_delta:
        if len(args.stores) != 2:
            parser.error("--export-delta SINCE takes STORE DELTA")
        rows = export_delta(args.stores[0], args.stores[1], args.export_delta)
        print(f"delta rows {rows}")
        return
    if args.merge_into:
        merge(args.stores, args.merge_into, replace=args.replace)
        before, after = compact_store(args.merge_into)
        print(f"merged {', '.join(map(str, args.stores))} into {args.merge_into} "
              f"({before / 2**20:.1f} -> {after / 2**20:.1f} MiB compacted)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        merged = Path(tmp) / "merged.duckdb"
        merge(args.stores, merged)
        with Store(merged, read_only=True) as store:
            counts = store.export_parquet(args.out)
            extra = manifest_extra(store)
    manifest_path = args.out / "manifest.json"
    manifest = {**json.loads(manifest_path.read_text()), **extra}
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    size = sum(p.stat().st_size for p in args.out.iterdir()) / 2**20
    print(f"{args.out}: {counts}, {size:.1f} MiB")


if __name__ == "__main__":
    main()
