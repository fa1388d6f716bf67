"""The package's shape: the layers import only downwards, and no modules import each other."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]


def test_layers_import_only_downwards() -> None:
    """import-linter's layers contract (pyproject.toml): cli > service > tune > model >
    collect > store > settings, errors."""
    lint = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    done = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def _cycle_from(graph: grimp.ImportGraph, start: str) -> list[str] | None:
    """A chain of direct imports from ``start`` back to itself, if there is one."""
    stack, seen = [(start, [start])], set()
    while stack:
        module, path = stack.pop()
        for imported in graph.find_modules_directly_imported_by(module):
            if imported == start:
                return [*path, start]
            if imported.startswith("perftune") and imported not in seen:
                seen.add(imported)
                stack.append((imported, [*path, imported]))
    return None


def test_no_import_cycles() -> None:
    """No module imports another that imports it back, at run time (imports only for type
    checking do not run)."""
    graph = grimp.build_graph("perftune", exclude_type_checking_imports=True)
    cycles = [c for m in sorted(graph.modules) if (c := _cycle_from(graph, m))]
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)
