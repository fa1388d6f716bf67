"""House rules for the repository's text: it speaks to users, not as a work log."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Work-log words: numbered sessions and issues, the tooling that lent GPUs. Spelled with
# character classes so that this file does not match itself.
HISTORY = re.compile(r"session ?[0-9]|issue ?[0-9]|device[ ]tool|device[_]session",
                     re.IGNORECASE)
# Records of past runs and shipped data, kept as they were produced.
SKIPPED = (re.compile(r"benchmarks/results/[^/]+\.json"), re.compile(r"perftune/data/.*"))


def _tracked_files() -> list[str]:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    return [name for name in listed.stdout.decode().split("\0") if name]


def _text(path: Path) -> str | None:
    """The file's text, or None for a binary file (or one deleted in the work tree)."""
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return None
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def test_no_history_words_in_tracked_text() -> None:
    hits = []
    for name in _tracked_files():
        if any(pattern.fullmatch(name) for pattern in SKIPPED):
            continue
        text = _text(ROOT / name)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if HISTORY.search(line):
                hits.append(f"{name}:{number}: {line.strip()}")
    assert not hits, "history words in tracked files:\n" + "\n".join(hits)
