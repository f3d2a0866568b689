"""Shared fixtures: the test model repository and a running gateway on each event loop."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from models import build_test_repository  # noqa: E402

from gateway.front.grpc.native import MISSING as NATIVE_GRPC_MISSING  # noqa: E402
from gateway.testing import ServerThread  # noqa: E402

LOOPS = ["asyncio", "uvloop"]
# The gRPC suites run against both fronts (grpc_front); native only where libnghttp2 was built in.
GRPC_FRONTS = [pytest.param("native", marks=pytest.mark.skipif(NATIVE_GRPC_MISSING is not None,
                                                               reason=str(NATIVE_GRPC_MISSING))), "grpcio"]


@pytest.fixture(scope="session")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_test_repository(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="session", params=LOOPS)
def loop_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module", params=GRPC_FRONTS)
def grpc_front(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def grpc_server(repo: Path, loop_name: str, grpc_front: str) -> Iterator[ServerThread]:
    """A gateway per event loop kind and gRPC front, for the gRPC suites that only read from it."""
    with ServerThread(repository=repo, loop=loop_name, grpc_front=grpc_front) as srv:
        yield srv


@pytest.fixture(scope="session")
def server(repo: Path, loop_name: str) -> Iterator[ServerThread]:
    """One gateway per event loop kind, shared by the tests that only read from it.

    Teardown checks that nothing leaked: no request left queued or in flight in any batcher, no
    answer still owed on any HTTP connection.
    """
    with ServerThread(repository=repo, loop=loop_name) as srv:
        yield srv

        async def leftovers() -> list[str]:
            left = [f"{mv.name}:{mv.version} queued={mv.batcher.queue.rows} in_flight={mv.batcher.in_flight}"
                    for mv in srv.app.registry.versions() if mv.batcher.queue.rows or mv.batcher.in_flight]
            left += [f"connection owes {len(c._tickets)} answers" for c in srv.app.http.connections if c._tickets]
            return left

        assert srv.call(leftovers()) == []
