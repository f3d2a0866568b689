"""Every snippet in README.md runs as written (ports and durations aside).

The README's fenced blocks are read in order and each one is executed against a real
`gateway serve --demo` process on free ports: bash lines (curl, `gateway demo export`,
`gateway loadtest ...`), Python blocks (tritonclient, the embedded API) as scripts, TOML blocks
through the parser they document. The only rewrites: the ports 8000/8001 become the test server's,
load-test durations shrink to about a second, and `gateway serve --demo &` is the server the test
already started. A block no rule knows fails `test_every_block_is_handled`, so a new snippet
cannot go untested. The newcomer's first command (fresh venv, `pip install -e .`, serve) runs in a
copy of the checkout, marked slow; the second (`bash .ci/run`) is the run this test is part of.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_cli import demo_process, free_port, wait_ready

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FIRST_COMMAND = ("(dpkg -s libnghttp2-dev g++ >/dev/null 2>&1 || { $(command -v sudo) apt-get update -q && "
                 "$(command -v sudo) apt-get install -y libnghttp2-dev g++; }) && "
                 "python3 -m venv .venv && . .venv/bin/activate && pip install -e . && gateway serve --demo")
TEST_COMMAND = "bash .ci/run"


@dataclass
class Block:
    lang: str
    text: str
    line: int


def blocks() -> list[Block]:
    out, lang, buf, start = [], None, [], 0
    for n, line in enumerate(README.read_text().splitlines(), 1):
        if line.startswith("```"):
            if lang is None:
                lang, buf, start = line[3:].strip(), [], n
            else:
                out.append(Block(lang, "\n".join(buf), start))
                lang = None
        elif lang is not None:
            buf.append(line)
    return out


def newcomer(b: Block) -> bool:
    """The two Start-here blocks: the first command (test_first_command) and the test command."""
    return b.text.strip() in (FIRST_COMMAND, TEST_COMMAND)


def handled(b: Block) -> bool:
    return b.lang in ("bash", "python", "toml")


def test_every_block_is_handled() -> None:
    bad = [f"README.md:{b.line} ({b.lang or 'no language'}): {b.text.splitlines()[0] if b.text else ''}"
           for b in blocks() if not handled(b)]
    assert not bad, "snippets no rule in tests/test_readme.py runs:\n" + "\n".join(bad)
    assert sum(newcomer(b) for b in blocks()) == 2


def with_ports(text: str, http: int, grpc: int) -> str:
    return re.sub(r"(?<=[:])8001\b", str(grpc), re.sub(r"(?<=[:])8000\b", str(http), text))


def shell_script(text: str, http: int) -> str:
    """A bash block as one script: `set -e`, curl fails on HTTP errors, load tests and tunes shortened, and
    `gateway serve --demo &` dropped (the fixture's server is already up)."""
    lines = []
    for line in re.sub(r"\\\n\s*", " ", text).splitlines():  # join continuations: rewrites see whole commands
        if line.strip().startswith("gateway serve --demo &"):
            continue
        line = line.replace("curl -s ", "curl -sf ")
        if line.lstrip().startswith("gateway loadtest"):
            line = shorter(line, http)
        if line.lstrip().startswith("gateway tune"):  # its search is tested in tests/test_tune*.py
            line = re.sub(r"--budget-s \d+", "--budget-s 20 --step-s 1", line)
        lines.append(line)
    return "set -euo pipefail\n" + "\n".join(lines) + "\n"


def shorter(cmd: str, http: int) -> str:
    """Load tests run for about a second each; a run without --url is pointed at the test server."""
    cmd = re.sub(r"(?<=\s)-d \d+", "-d 1", cmd)
    cmd = re.sub(r"--warmup \d+", "--warmup 0", cmd)
    cmd = re.sub(r"--step-duration \d+", "--step-duration 0.5", cmd)
    cmd = re.sub(r"--steps (\S+)", lambda m: "--steps " + ",".join(
        f"{s.split(':')[0]}:0.5" for s in m.group(1).split(",")), cmd)
    if " sweep " in cmd:  # fewer, shorter steps: the sweep's logic is tested in tests/loadtest
        cmd += " --cooldown 0 --refine 1 --retries 2"  # a step a host hiccup failed is measured again
    if " --url " not in cmd and " capacity " not in cmd:
        cmd = cmd.replace("gateway loadtest", f"gateway loadtest --url 127.0.0.1:{http}", 1)
    return cmd


@pytest.fixture(scope="module")
def demo_server() -> Iterator[tuple[int, int]]:
    # --allow-client-shm: the shared-memory snippet says to start the server with it
    # the token: the version-routing snippet says to start the server with it
    with demo_process("--allow-client-shm", GATEWAY_ADMIN_TOKEN="change-me") as (_, http_port, grpc_port):
        yield http_port, grpc_port


def run_shell(script: str, cwd: Path, where: str, timeout: float = 300) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    r = subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, f"{where} exited {r.returncode}:\n{script}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return r.stdout


def test_snippets_run_in_order(demo_server: tuple[int, int], tmp_path: Path) -> None:
    http, grpc = demo_server
    ran = 0
    for b in blocks():
        if newcomer(b):
            continue
        text = with_ports(b.text, http, grpc)
        where = f"README.md:{b.line}"
        if b.lang == "python":
            script = tmp_path / f"snippet_{b.line}.py"
            script.write_text(text)
            r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                               timeout=120)
            assert r.returncode == 0, f"{where}:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
        elif b.lang == "toml":
            check_toml(text, where, tmp_path)
        else:
            run_shell(shell_script(text, http), tmp_path, where)
        ran += 1
    assert ran >= 6


def check_toml(text: str, where: str, tmp: Path) -> None:
    import tomllib

    from gateway.model_config import parse_config
    from gateway.settings import ServerSettings

    data = tomllib.loads(text)
    if "config.toml" in text.splitlines()[0]:  # a model's config.toml
        from gateway.pipeline.policy import parse_policy

        traffic = data.pop("traffic", None)
        parse_config("mlp", data)
        if traffic is not None:
            parse_policy(traffic)
        data = data or {"traffic": traffic}
    else:  # a server settings file
        f = tmp / "settings.toml"
        f.write_text(text)
        ServerSettings.load(f, env={}, overrides={"demo": True})
    assert data, where


@pytest.mark.slow
def test_first_command(tmp_path: Path) -> None:
    """The newcomer's first command in a copy of the checkout: fresh venv, editable install, serve
    the demo; then the `try: curl ...` line the server prints answers."""
    src = tmp_path / "checkout"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, src / f)
    http_port, grpc_port = free_port(), free_port()
    cmd = f"{FIRST_COMMAND} --http-port {http_port} --grpc-port {grpc_port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if ".venv" not in p)
    proc = subprocess.Popen(["bash", "-c", cmd], cwd=src, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, start_new_session=True)
    try:
        lines: list[str] = []
        end = time.time() + 900
        assert proc.stdout is not None
        while time.time() < end:
            line = proc.stdout.readline()
            if not line:
                pytest.fail("the first command exited:\n" + "".join(lines[-40:]))
            lines.append(line)
            if line.startswith("try: curl"):
                break
        wait_ready(http_port, proc)
        out = run_shell(line[len("try: "):].strip(), tmp_path, "the banner's curl line", 60)
        assert json.loads(out)["outputs"][0]["data"] == [3.0] * 16
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
