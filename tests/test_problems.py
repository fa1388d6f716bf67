"""Problems: parsing from flags and files, with clear errors for bad sizes and dtypes."""

from __future__ import annotations

from pathlib import Path

import pytest

from perftune.collect.problems import check_fits, normalize_dtype, parse_problem, read_problems_file
from perftune.errors import PerftuneInputError

GEMM = ("m", "n", "k")


@pytest.mark.parametrize("text", ["128x4096x512", "128X4096X512", "m=128,n=4096,k=512",
                                  "k=512 m=128 n=4096"])
def test_parse_forms(text: str) -> None:
    problem = parse_problem(text, GEMM, "half")
    assert problem.sizes == {"m": 128, "n": 4096, "k": 512}
    assert problem.dtype == "fp16"


@pytest.mark.parametrize(("text", "message"), [
    ("0x16x16", "must be a positive integer"),
    ("-4x16x16", "must be a positive integer"),
    ("16x16", "has 2 sizes"),
    ("axbxc", "not an integer"),
    ("m=1,n=2,q=3", "missing k; unknown q"),
    ("m=1,n", "'n' is not name=size"),
    ("m=1,m=2,n=3,k=4", "gives the size m twice"),
    ("M=1,m=2,n=3,k=4", "gives the size m twice"),
    ("=1,n=2,k=3", "'=1' is not name=size"),
])
def test_malformed_problems(text: str, message: str) -> None:
    with pytest.raises(PerftuneInputError, match=message):
        parse_problem(text, GEMM, "fp16")


def test_unknown_dtype() -> None:
    with pytest.raises(PerftuneInputError, match="unknown dtype 'int3'"):
        normalize_dtype("int3")


def test_absurd_sizes_do_not_fit() -> None:
    problem = parse_problem("100000x100000x100000", GEMM, "fp16")
    with pytest.raises(PerftuneInputError, match="more than the 2\\^31"):
        check_fits(problem, 6e10, None, 10**10)
    with pytest.raises(PerftuneInputError, match="GiB"):
        check_fits(problem, 6e10, 2**30, 10**6)


def test_csv_and_json_files(tmp_path: Path) -> None:
    csv_file = tmp_path / "p.csv"
    csv_file.write_text("# a comment\nm,n,k,dtype,source\n1,2,3,bf16,x\n4,5,6,,y\n")
    problems = read_problems_file(csv_file, GEMM, "fp16")
    assert [(p.sizes["k"], p.dtype) for p in problems] == [(3, "bf16"), (6, "fp16")]
    json_file = tmp_path / "p.json"
    json_file.write_text('[{"m": 7, "n": 8, "k": 9}]')
    assert read_problems_file(json_file, GEMM, "fp16")[0].sizes == {"m": 7, "n": 8, "k": 9}


def test_shipped_problem_lists_parse() -> None:
    from perftune.settings import PROBLEMS_DIR

    lists = sorted(PROBLEMS_DIR.glob("gemm*.csv"))
    assert lists
    for path in lists:
        assert read_problems_file(path, GEMM, "fp16")


@pytest.mark.parametrize(("content", "message"), [
    (b"\x00\x01\x02", "is binary"),
    (b"m,n,k\n\xff,2,3\n", "is not UTF-8 text (byte 0xff at offset 6)"),
    (b"m,m,n,k\n1,2,3,4\n", "header gives the size m twice"),
    (b"m,n,k\n1,2,3,4\n", "more values than the header has names"),
    (b"m,n,k\n" + b"1" * 200_000 + b",2,3\n", "is not readable CSV: field larger"),
])
def test_unreadable_csv_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "p.csv"
    path.write_bytes(content)
    with pytest.raises(PerftuneInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_problems_file(path, GEMM, "fp16")


@pytest.mark.parametrize(("content", "message"), [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('[{"m": 1, "m": 2, "n": 3, "k": 4}]', "gives the size m twice"),
    ('[{"m": 1, "n": 2, "k": {"deep": [1, 2]}}]', "is not an integer"),
    ('[{"m": 1e999, "n": 2, "k": 3}]', "is not an integer"),
    ('[{"m": true, "n": 2, "k": 3}]', "is not an integer"),
    ("[1, 2]", "entry 1 is not an object"),
])
def test_unreadable_json_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(PerftuneInputError, match=message):
        read_problems_file(path, GEMM, "fp16")


def test_spread_out_takes_the_middle_then_the_farthest() -> None:
    from perftune.collect.problems import spread_out

    shapes = [f"m={m},n={n},k=4096" for m in (1, 16, 256, 4096) for n in (256, 4096, 65536)]
    chosen = spread_out(shapes, 4)
    assert len(set(chosen)) == 4 and chosen[0] == "m=16,n=4096,k=4096"  # nearest the middle
    assert {"m=4096,n=65536,k=4096", "m=1,n=256,k=4096"} & set(chosen[1:3])  # corners next
    assert spread_out(shapes, 50) == spread_out(shapes, 12) and len(spread_out(shapes, 50)) == 12
    assert spread_out([], 3) == [] and spread_out(shapes, 0) == []
