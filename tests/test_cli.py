"""The command line: help, device identity, bad input (exit 2, store untouched), db commands."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest

from perftune.store.db import Store
from perftune.store.schema import SCHEMA_VERSION
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
    (["--problem", "16x16x16", "--sample", "0"],
     "argument --sample: must be a whole number of at least 1"),
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
        store.con.execute("UPDATE perftune_meta SET value = ? WHERE name = 'schema_version'",
                          [str(SCHEMA_VERSION + 1)])
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
    assert code == 0 and f"schema v{SCHEMA_VERSION}" in out
    assert cli("db", "stats", "--db", db)[0] == 0


# Flags out of range: argparse's error, as perftune's one line, before anything is opened.
BAD_FLAGS = [
    (["collect", "--compile-workers", "-5"],
     "argument --compile-workers: must be a whole number of at least 1, not -5"),
    (["collect", "--energy-window", "0"], "argument --energy-window: must be a positive number"),
    (["collect", "--energy-window", "nan"], "argument --energy-window: must be a positive"),
    (["collect", "--rounds", "0"], "argument --rounds: must be a whole number of at least 1"),
    (["collect", "--rounds", "two"], "argument --rounds: must be a whole number of at least 1, "
                                     "not 'two'"),
    (["collect", "--timeout", "-1"], "argument --timeout: must be a positive number"),
    (["collect", "--timeout", "inf"], "argument --timeout: must be a positive number"),
    (["collect", "--sample", "-3"], "argument --sample: must be a whole number of at least 1"),
    (["collect", "--seed", "-1"], "argument --seed: must be a whole number of at least 0"),
    (["collect", "--chunk-size", "0"], "argument --chunk-size: must be a whole number"),
    (["collect", "--retime-below", "0"], "argument --retime-below: must be a positive number"),
    (["collect", "--bogus"], "unrecognized arguments: --bogus"),
    (["tune", "--problem", "16x16x16", "--budget", "0"],
     "argument --budget: must be a whole number of at least 1"),
    (["tune", "--problem", "16x16x16", "--seed", "-2"],
     "argument --seed: must be a whole number of at least 0"),
    (["tune", "--problem", "16x16x16", "--max-time-loss", "1.5"],
     "argument --max-time-loss: must be a number in [0, 1)"),
    (["tune", "--problem", "16x16x16", "--energy-window", "-1"],
     "argument --energy-window: must be a positive number"),
    (["predict", "--problem", "16x16x16", "--device", "x", "--top", "0"],
     "argument --top: must be a whole number of at least 1"),
    (["fit", "--trees", "0"], "argument --trees: must be a whole number of at least 1"),
]


@pytest.mark.parametrize(("args", "message"), BAD_FLAGS)
def test_flags_out_of_range_exit_2_in_one_line(db: Path, cli: Cli, args: list[str],
                                              message: str) -> None:
    code, out, err = cli(*args, "--db", db)
    assert code == 2, (out, err)
    assert err.startswith("perftune: error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert not db.exists()


# Problems that used to end in a traceback, or were taken silently.
BAD_PROBLEM_FILES: list[tuple[str, bytes, str]] = [
    ("binary.csv", bytes(range(256)), "is binary, not CSV or JSON text"),
    ("latin1.csv", "m,n,k\n1,2,3 # größe\n".encode("latin-1"), "is not UTF-8 text"),
    ("deep.json", b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ("twice.json", b'[{"m": 1, "m": 2, "n": 3, "k": 4}]', "gives the size m twice"),
    ("case.json", b'[{"m": 1, "M": 2, "n": 3, "k": 4}]', "gives the size m twice"),
    ("twice.csv", b"m,m,n,k\n1,2,3,4\n", "gives the size m twice"),
    ("object.json", b'{"m": 1, "n": 2, "k": 3}', "must hold a JSON list of objects"),
    ("long.csv", b"m,n,k\n1,2,3,4\n", "more values than the header has names"),
]


@pytest.mark.parametrize(("name", "content", "message"), BAD_PROBLEM_FILES,
                         ids=[name for name, _, _ in BAD_PROBLEM_FILES])
def test_bad_problem_files_exit_2_in_one_line(tmp_path: Path, db: Path, cli: Cli, name: str,
                                             content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    code, _, err = cli("collect", "--problems-file", path, "--db", db)
    assert code == 2 and err.startswith("perftune: error: ") and err.count("\n") == 1, err
    assert message in err and str(path) in err, err
    assert not db.exists()


@pytest.mark.parametrize(("text", "message"), [
    ("m=1,n", "'n' is not name=size"),
    ("m=1,m=2,n=3,k=4", "gives the size m twice"),
    ("m=1,=2,k=3", "'=2' is not name=size"),
])
def test_bad_problem_flags_exit_2_in_one_line(db: Path, cli: Cli, text: str,
                                              message: str) -> None:
    for command in (["collect"], ["tune", "--device", "x"],
                    ["predict", "--device", "x"]):
        code, _, err = cli(*command, "--problem", text, "--db", db)
        assert code == 2 and err.startswith("perftune: error: ") and err.count("\n") == 1, err
        assert message in err, (command, err)
    assert not db.exists()


H100 = "nvidia-h100-80gb-hbm3"


def _small_store(path: Path) -> str:
    """A store of four H100 GEMM problems with busy-GPU energy rows, from the shipped data
    (models train on it in seconds). Returns one of its problems, as MxNxK."""
    from perftune.settings import DATASET_DIR
    from perftune.store.dataset import heldout_mask
    from perftune.store.db import read_export
    from perftune.store.rules import busy_energy

    frames = read_export(DATASET_DIR)
    rows = frames["measurements"]
    rows = rows[(rows["device_id"] == H100) & (rows["family"] == "gemm")]
    rows = rows[~heldout_mask(rows)]
    busy = rows[busy_energy(rows).fillna(False).astype(bool)]
    shapes = list(busy["shape"].value_counts().index[:4])
    with Store(path) as store:
        store.import_frames({"devices": frames["devices"],
                             "campaigns": frames["campaigns"].iloc[:0],
                             "measurements": rows[rows["shape"].isin(shapes)]})
    sizes = dict(part.split("=") for part in shapes[0].split(","))
    return "x".join(sizes[d] for d in ("m", "n", "k"))


def test_json_output_is_only_json(tmp_path: Path, cli: Cli) -> None:
    """Progress and notices (training a model, once) go to stderr beside --json's output."""
    small = tmp_path / "small.duckdb"
    problem = _small_store(small)
    code, out, err = cli("tune", "--db", small, "--device", H100, "--problem", problem,
                         "--budget", "3", "--json")
    assert code == 0, err
    assert 1 <= json.loads(out)["measurements"] <= 3
    assert "training the power model" in err  # said, on stderr
    model = tmp_path / "home" / "models" / "gemm_runtime.skops"
    code, out, err = cli("predict", "--db", small, "--device", H100, "--problem", problem,
                         "--top", "3", "--json", "--model", model)
    assert code == 0, err
    assert len(json.loads(out)) == 3
    for args in (["db", "stats"], ["db", "stats", "--campaigns"]):
        code, out, err = cli(*args, "--db", small, "--json")
        assert code == 0, err
        assert isinstance(json.loads(out), list)
    code, out, err = cli("device", "--interpret", "--json")
    assert code == 0 and json.loads(out)["device_id"] == "cpu-triton-interpreter"

