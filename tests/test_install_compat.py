"""The package installs and serves beside the current tritonclient, and on every protobuf major
it declares (issue: a build with the newest grpcio-tools died on import under protobuf 6).

Each case is a fresh venv with the wheel built from this checkout and the current releases of
everything else, as a user gets them from ``pip install``. Slow (minutes: one wheel build, three
venvs), so marked ``slow``; CI runs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SMOKE = Path(__file__).parent / "install" / "smoke.py"

pytestmark = pytest.mark.slow


def run(cmd: list[str], **kw) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, **kw)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)])
    (whl,) = out.glob("inference_gateway-*.whl")
    return whl


def venv_with(tmp: Path, *requirements: str) -> Path:
    run([sys.executable, "-m", "venv", str(tmp)])
    py = tmp / "bin" / "python"
    run([str(py), "-m", "pip", "install", "-q", *requirements])
    return py


def smoke(py: Path, mode: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "GATEWAY_", "VIRTUAL_ENV"))}
    out = run([str(py), str(SMOKE), mode], cwd=py.parent, env=env)
    return json.loads(out.strip().splitlines()[-1])


def test_beside_current_tritonclient(wheel: Path, tmp_path: Path) -> None:
    """`pip install inference-gateway 'tritonclient[all]'` in one venv, then serve and infer."""
    py = venv_with(tmp_path / "venv", str(wheel), "tritonclient[all]")
    got = smoke(py, "tritonclient")
    assert got["ok"], got


@pytest.mark.parametrize("protobuf", ["protobuf>=4.25,<5", "protobuf>=7,<8"], ids=["lowest-major", "highest-major"])
def test_protobuf_majors(wheel: Path, tmp_path: Path, protobuf: str) -> None:
    py = venv_with(tmp_path / "venv", str(wheel), protobuf)
    got = smoke(py, "stub")
    major = int(got["protobuf"].split(".")[0])
    assert major == (4 if "<5" in protobuf else 7), got
