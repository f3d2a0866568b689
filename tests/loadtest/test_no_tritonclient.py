"""`gateway loadtest` needs neither tritonclient nor, to serve, its own extra.

A directory on PYTHONPATH shadows a package with one that fails to import, so the subprocess runs
as in a venv without it: the gRPC load test still works (our own stubs), and a missing extra
library gives one clear line naming `pip install 'inference-gateway[loadtest]'`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.testing import ServerThread


def without(tmp_path: Path, *packages: str) -> dict[str, str]:
    for name in packages:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"raise ImportError('{name} is not installed here')\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture(scope="module")
def demo() -> ServerThread:
    with ServerThread(loop="uvloop") as srv:
        yield srv


def test_grpc_loadtest_runs_without_tritonclient(demo: ServerThread, tmp_path: Path) -> None:
    env = without(tmp_path, "tritonclient")
    probe = subprocess.run([sys.executable, "-c", "import tritonclient"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0  # the shadow works
    r = subprocess.run([sys.executable, "-m", "gateway", "loadtest", "-p", "grpc", "--url", demo.grpc_url,
                        "-m", "mlp", "--rate", "200", "-d", "1", "--procs", "1", "--json", "--quiet",
                        "--scrape"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])["summary"]
    assert summary["requests"]["errors"] == 0 and summary["requests"]["sent"] > 0


def test_missing_extra_names_the_install_command(tmp_path: Path) -> None:
    env = without(tmp_path, "rich")
    r = subprocess.run([sys.executable, "-m", "gateway", "loadtest", "--url", "127.0.0.1:1", "-m", "mlp"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "rich" in r.stderr and "pip install 'inference-gateway[loadtest]'" in r.stderr
    assert "Traceback" not in r.stderr
