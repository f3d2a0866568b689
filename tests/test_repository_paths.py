"""Repository load/unload reach only the repository's own model directories (issue: `%2Ftmp%2Fx`
or `..%2Fx` loaded a model from anywhere on the host, errors told whether a directory existed
and printed the repository's path, and 40 aliases like `./mlp` loaded 40 copies).

Over real sockets with tritonclient (HTTP and gRPC) and raw HTTP for the encoded paths.
"""

from __future__ import annotations

import http.client
import shutil
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from gateway.testing import ServerThread


@pytest.fixture(scope="module")
def outside_and_server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("paths")
    repo = root / "repo"
    outside = root / "outside"
    from gateway.demo import build_demo_repository

    build_demo_repository(repo)
    shutil.rmtree(repo / "add_sub")
    build_demo_repository(outside)  # a complete, loadable model repository outside the served one
    with ServerThread(repository=repo) as srv:
        yield outside, repo, srv


def post(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=b"{}")
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


NAMES = ["%2Ftmp%2Fx", "..%2Foutside%2Fmlp", "..", ".", "mlp%2F..%2F..%2Foutside%2Fmlp", "%2E%2E",
         ".%2Fmlp", ".%2F.%2Fmlp", "mlp%00", "x" * 300]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("action", ["load", "unload"])
def test_names_outside_the_repository_are_refused_and_reveal_no_path(outside_and_server, name, action) -> None:
    outside, repo, srv = outside_and_server
    before = len(srv.app.registry.versions())
    status, body = post(srv.http_port, f"/v2/repository/models/{name}/{action}")
    assert status in (400, 404), (status, body)
    text = body.decode()
    assert str(repo) not in text and str(outside) not in text and "/tmp/" not in text.replace("/tmp/x", "")
    assert f"failed to {action}" in text or "unknown model" in text, text
    assert len(srv.app.registry.versions()) == before  # nothing loaded
    assert set(srv.app.registry.models) == {"mlp"}


def test_outside_existing_and_missing_directories_answer_alike(outside_and_server) -> None:
    """An error must not tell an attacker whether a directory exists elsewhere on the host."""
    outside, _, srv = outside_and_server
    exists = post(srv.http_port, "/v2/repository/models/..%2Foutside/unload")
    missing = post(srv.http_port, "/v2/repository/models/..%2Fnowhere/unload")
    assert exists[0] == missing[0]
    assert exists[1].replace(b"outside", b"X") == missing[1].replace(b"nowhere", b"X")


def test_grpc_load_outside_is_refused(outside_and_server) -> None:
    outside, repo, srv = outside_and_server
    c = grpcclient.InferenceServerClient(srv.grpc_url)
    for name in ("../outside/mlp", str(outside / "mlp"), "./mlp", "mlp/"):
        with pytest.raises(InferenceServerException) as e:
            c.load_model(name)
        assert "failed to load" in e.value.message() and str(repo) not in e.value.message()
    assert set(srv.app.registry.models) == {"mlp"}
    c.close()


def test_repository_control_none_refuses_load_and_unload(tmp_path: Path) -> None:
    from gateway.demo import build_demo_repository

    build_demo_repository(tmp_path)
    with ServerThread(repository=tmp_path, repository_control="none") as srv:
        h = httpclient.InferenceServerClient(srv.http_url)
        g = grpcclient.InferenceServerClient(srv.grpc_url)
        for call in (h.load_model, h.unload_model, g.load_model, g.unload_model):
            with pytest.raises(InferenceServerException) as e:
                call("mlp")
            assert "repository_control" in e.value.message()
        assert h.is_model_ready("mlp")
        h.close()
        g.close()
