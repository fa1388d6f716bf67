"""A damaged store (cut short, a block overwritten, a schema version that is not a number):
one line naming the file, exit 2, and the file left as it was."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest

from perftune.errors import StoreError
from perftune.store.db import Store
from tests.conftest import fingerprint

Cli = Callable[..., tuple[int, str, str]]
HEADERS = 3 * 4096  # DuckDB's main header and two database headers come before the blocks


def _data_offset(path: Path, table: str, column: str) -> int:
    """Where the first stored segment of ``table.column`` starts in the file."""
    with Store(path, read_only=True) as store:
        block, offset = store.query(
            f"SELECT block_id, block_offset FROM pragma_storage_info('{table}') WHERE "
            f"column_name = ? AND segment_type <> 'VALIDITY' AND block_id >= 0 "
            f"ORDER BY block_id, block_offset LIMIT 1", [column]).iloc[0]
        size = int(store.query("SELECT block_size FROM pragma_database_size()")
                   ["block_size"][0])
    return HEADERS + int(block) * size + 8 + int(offset)  # 8: the block's checksum


def _overwrite(path: Path, table: str, column: str) -> None:
    with path.open("r+b") as handle:
        handle.seek(_data_offset(path, table, column) + 16)
        handle.write(b"\xa5" * 64)


def _cut_in_half(path: Path) -> None:
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


def _schema_two(path: Path) -> None:
    con = duckdb.connect(str(path))
    con.execute("UPDATE perftune_meta SET value = 'two' WHERE name = 'schema_version'")
    con.close()


DAMAGES = {
    "cut in half": (_cut_in_half, "is damaged"),
    "runtime block overwritten": (lambda p: _overwrite(p, "measurements", "runtime_ms"),
                                  "is damaged"),
    "config block overwritten": (lambda p: _overwrite(p, "measurements", "config"),
                                 "is damaged"),
    "campaigns block overwritten": (lambda p: _overwrite(p, "campaigns", "command"),
                                    "is damaged"),
    "schema version two": (_schema_two, "gives schema_version 'two', not a number"),
}


@pytest.fixture(params=list(DAMAGES))
def damaged(request: pytest.FixtureRequest, shipped: Path,
            tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "damaged.duckdb"
    shutil.copyfile(shipped, path)
    damage, message = DAMAGES[request.param]
    damage(path)
    return path, message


def _one_line(code: int, err: str, path: Path, message: str) -> None:
    assert code == 2, err
    assert err.startswith("perftune: error: ") and err.count("\n") == 1, err
    assert str(path) in err and message in err, err


def test_damaged_store_is_one_line_and_exit_2(damaged: tuple[Path, str], tmp_path: Path,
                                              cli: Cli) -> None:
    path, message = damaged
    before = fingerprint(path)
    for args in (["db", "stats"], ["db", "stats", "--json"], ["db", "stats", "--campaigns"],
                 ["db", "export", str(tmp_path / "out")], ["db", "compact"]):
        code, _, err = cli(*args, "--db", path)
        _one_line(code, err, path, message)
        assert fingerprint(path) == before, args
    assert not path.with_name(path.name + ".compacting").exists()


@pytest.mark.parametrize("damage", ["cut in half", "schema version two"])
def test_damaged_store_refuses_a_collection(damage: str, shipped: Path, tmp_path: Path,
                                            cli: Cli) -> None:
    path = tmp_path / "damaged.duckdb"
    shutil.copyfile(shipped, path)
    DAMAGES[damage][0](path)
    before = fingerprint(path)
    code, _, err = cli("collect", "--interpret", "--problem", "16x32x32", "--dataflows",
                       "cublas", "--no-progress", "--db", path)
    _one_line(code, err, path, DAMAGES[damage][1])
    assert fingerprint(path) == before


def test_verify_passes_a_whole_store(shipped: Path) -> None:
    with Store(shipped, read_only=True) as store:
        store.verify()
        with pytest.raises(StoreError, match="read-only"):
            store.insert("measurements", [])  # still read-only, nothing else to it
