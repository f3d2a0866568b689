"""Settings: file, then GATEWAY_* environment, then flags; bad values are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.settings import ServerSettings


def test_precedence(tmp_path: Path) -> None:
    f = tmp_path / "gw.toml"
    f.write_text('[server]\nhttp_port = 9000\ngrpc_port = 9001\ndemo = true\nmax_body_bytes = 1000\n')
    s = ServerSettings.load(f, env={"GATEWAY_HTTP_PORT": "9100", "GATEWAY_LOOP": "asyncio"},
                            overrides={"http_port": 9200, "host": None})
    assert (s.http_port, s.grpc_port, s.max_body_bytes, s.loop, s.host) == (9200, 9001, 1000, "asyncio", "127.0.0.1")
    s = ServerSettings.load(f, env={"GATEWAY_HTTP_PORT": "9100"})
    assert s.http_port == 9100


@pytest.mark.parametrize("env, msg", [
    ({"GATEWAY_HTTP_PORT": "abc"}, "GATEWAY_HTTP_PORT"),
    ({"GATEWAY_MAX_BODY_BYTES": "0"}, "max_body_bytes"),
    ({"GATEWAY_LOOP": "trio"}, "loop"),
    ({"GATEWAY_DEMO": "maybe"}, "GATEWAY_DEMO"),
])
def test_bad_values_named(env: dict, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        ServerSettings.load(None, env={"GATEWAY_DEMO": "1", **env})


def test_unknown_key_in_file(tmp_path: Path) -> None:
    f = tmp_path / "gw.toml"
    f.write_text("http_prot = 1\n")
    with pytest.raises(ValueError, match="http_prot"):
        ServerSettings.load(f, env={})


def test_repository_required() -> None:
    with pytest.raises(ValueError, match="model repository"):
        ServerSettings.load(None, env={})
