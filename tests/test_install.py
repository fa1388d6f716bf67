"""perftune installed as a user installs it: outside the checkout, it finds its shipped data,
builds its store and models in the user data directory, and serves and predicts there."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
H100 = "nvidia-h100-80gb-hbm3"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip install .`` (without dependencies: the test's environment has them) into a
    folder of its own; the checkout is not on the path."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(ROOT)],
                   check=True, timeout=300, capture_output=True)
    return target


def _env(installed: Path, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERFTUNE_")}
    return {**env, "PYTHONPATH": str(installed), "PERFTUNE_HOME": str(home)}


def _perftune(installed: Path, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "perftune", *args], cwd=home.parent,
                          env=_env(installed, home), capture_output=True, text=True,
                          timeout=600)


def test_installed_package_predicts_and_serves(installed: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    where = subprocess.run([sys.executable, "-c", "import perftune; print(perftune.__file__)"],
                           cwd=tmp_path, env=_env(installed, home), capture_output=True,
                           text=True, check=True)
    assert where.stdout.strip().startswith(str(installed))
    for target in ("runtime", "power", "energy"):
        done = _perftune(installed, home, "fit", "--target", target, "--trees", "4")
        assert done.returncode == 0, done.stderr
    assert (home / "perftune.duckdb").is_file() and (home / "models").is_dir()
    done = _perftune(installed, home, "predict", "--problem", "128x4096x4096", "--device", H100,
                     "--top", "3", "--json")
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)) == 3

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "perftune", "serve", "--port", str(port)],
                              cwd=tmp_path, env=_env(installed, home),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        models = _get_when_up(f"http://127.0.0.1:{port}/v1/models", server)
        runtime = next(m for m in models if m["target"] == "runtime")
        assert runtime["accuracy"]["heldout_problems"] > 0
        assert 0 < runtime["accuracy"]["runtime_mape"] < 1
    finally:
        server.terminate()
        server.wait(timeout=30)


def _get_when_up(url: str, server: subprocess.Popen[str]) -> list[dict[str, object]]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert server.poll() is None, server.stderr.read() if server.stderr else ""
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                return json.loads(answer.read())
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"no answer from {url} within 120 s")
