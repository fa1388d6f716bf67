"""The command line: help, device identity, bad input (exit 2, store untouched), db commands."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest

from perftune.store.db import Store
from tests.conftest import fingerprint

Cli = Callable[..., tuple[int, str, str]]


@pytest.mark.parametrize("command", [[], ["collect"], ["device"], ["db"], ["db", "export"],
                                     ["db", "import"], ["db", "stats"], ["db", "compact"]])
def test_help_explains_each_command(command: list[str],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    from perftune.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "usage: perftune" in text and len(text) > 200


def test_device_on_cpu_is_the_interpreter(cli: Cli) -> None:
    code, out, _ = cli("device", "--json", "--interpret")
    identity = json.loads(out)
    assert code == 0
    assert identity["device_id"] == "cpu-triton-interpreter"
    assert identity["kind"] == "cpu-interpreter"
    assert identity["software"]["triton_version"]


def _store_with_one_row(db: Path, cli: Cli) -> str | None:
    code, _, err = cli("collect", "--db", db, "--problem", "16x32x32", "--dataflows", "cublas",
                       "--no-progress")
    assert code == 0, err
    return fingerprint(db)


BAD_COLLECTS = [
    (["--family", "softmaxx"], "unknown family 'softmaxx'"),
    (["--dataflows", "cublas,magic"], "has no dataflow 'magic'"),
    (["--dtype", "fp8x"], "unknown dtype 'fp8x'"),
    (["--problem", "0x16x16"], "must be a positive integer"),
    (["--problem=-3x16x16"], "must be a positive integer"),
    (["--problem", "16x16"], "has 2 sizes"),
    (["--problem", "3000000x3000000x16"], "more than the 2^31"),
    (["--problem", "16x16x16", "--sample", "0"], "--sample must be at least 1"),
    (["--problems-file", "/nonexistent/problems.csv"], "does not exist"),
    (["--energy-only", "--problem", "16x32x32"], "needs a GPU"),
]


@pytest.mark.parametrize(("flags", "message"), BAD_COLLECTS)
def test_bad_collect_input_exits_2_and_leaves_store(db: Path, cli: Cli, flags: list[str],
                                                    message: str) -> None:
    before = _store_with_one_row(db, cli)
    code, _, err = cli("collect", "--db", db, "--no-progress", *flags)
    assert code == 2
    assert message in err and err.startswith("perftune: error:")
    assert err.count("\n") == 1  # one clear line, no traceback
    assert fingerprint(db) == before


def test_bad_input_creates_no_store(db: Path, cli: Cli) -> None:
    code, _, _ = cli("collect", "--db", db, "--family", "nope")
    assert code == 2 and not db.exists()


def test_foreign_and_newer_stores_exit_2_untouched(tmp_path: Path, db: Path, cli: Cli) -> None:
    foreign = tmp_path / "foreign.duckdb"
    con = duckdb.connect(str(foreign))
    con.execute("CREATE TABLE sales (x INT)")
    con.close()
    text = tmp_path / "text.duckdb"
    text.write_text("not a database at all\n" * 20)
    _store_with_one_row(db, cli)
    with Store(db) as store:
        store.con.execute("UPDATE perftune_meta SET value = '7' WHERE name = 'schema_version'")
    for path, message in ((foreign, "not a perftune store"), (text, "not a DuckDB database"),
                          (db, "newer than this perftune")):
        before = fingerprint(path)
        for args in (["collect", "--problem", "16x32x32", "--no-progress"], ["db", "stats"]):
            code, _, err = cli(*args, "--db", path)
            assert code == 2 and message in err, (path, args, err)
        assert fingerprint(path) == before


def test_db_stats_export_import(db: Path, tmp_path: Path, cli: Cli) -> None:
    _store_with_one_row(db, cli)
    code, out, _ = cli("db", "stats", "--db", db, "--json")
    stats = json.loads(out)
    assert code == 0 and stats[0]["ok"] == 1 and stats[0]["problems"] == 1
    code, out, _ = cli("db", "export", str(tmp_path / "exp"), "--db", db)
    assert code == 0 and "measurements 1" in out
    copy = tmp_path / "copy.duckdb"
    code, out, _ = cli("db", "import", str(tmp_path / "exp"), "--db", copy)
    assert code == 0 and "measurements 1" in out
    code, out, _ = cli("db", "import", str(tmp_path / "exp"), "--db", copy)
    assert "measurements 0" in out
    code, _, err = cli("db", "import", str(tmp_path), "--db", copy)
    assert code == 2 and "no manifest.json" in err
    code, out, _ = cli("db", "compact", "--db", copy)
    assert code == 0 and "compacted" in out and "MiB" in out
    assert json.loads(cli("db", "stats", "--db", copy, "--json")[1])[0]["ok"] == 1


def test_older_store_is_migrated_on_request(db: Path, cli: Cli) -> None:
    from perftune.store.schema import MIGRATIONS

    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE perftune_meta (name VARCHAR PRIMARY KEY, value VARCHAR)")
    for statement in MIGRATIONS[0]:
        con.execute(statement)
    con.execute("INSERT INTO perftune_meta VALUES ('schema_version', '1')")
    con.close()
    code, _, err = cli("db", "stats", "--db", db)
    assert code == 2 and "perftune db migrate" in err
    code, out, _ = cli("db", "migrate", "--db", db)
    assert code == 0 and "schema v2" in out
    assert cli("db", "stats", "--db", db)[0] == 0
