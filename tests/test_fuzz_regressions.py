"""The fuzz corpus as regression tests: every committed file of fuzz/corpus/<target>/ (seeds,
the reproducer of each bug fixed, and any crash input not fixed yet) goes through its target
(fuzz/<target>.py, the same ``one_input`` atheris drives) and must keep the target's contract.

Deterministic and fast: no atheris, no sockets (http_wire feeds a real HttpProtocol over a fake
transport). The last tests put three of the fixed bugs back and check that the replay fails.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # fuzz/ is a top-level tool directory, like bench/, not a package we ship
    sys.path.insert(0, str(ROOT))

from fuzz import CORPUS, TARGETS, corpus_files, load  # noqa: E402

CASES = [(target, path) for target in TARGETS for path in corpus_files(target)]

# Issue 8's bugs, each with a reproducer that the replay must keep passing.
REPRODUCERS = {
    "http_body": ["bug1-bytes-shape-2p63-json", "bug1-bytes-shape-2p63-binary", "bug1-empty-shape-huge-dims-json",
                  "bug1-empty-shape-huge-dims-binary", "bug1-65-dims-binary", "bug1-65-dims-json-numbers",
                  "bug1-bytes-nested-1000-deep-json", "bug6-uneven-nesting-numbers", "bug6-uneven-nesting-bytes",
                  "bug6-duplicate-outputs", "bug6-data-and-binary-data-size", "fuzz-bytes-data-not-an-array"],
    "grpc_request": ["bug5-empty-shape-huge-dims-raw", "bug5-bytes-shape-2p62x4", "bug5-65-dims",
                     "fuzz-bytes-shm-count-past-ssize"],
    "http_wire": ["bug1-decode-triggers-pipelined", "bug6-lenient-bodies-pipelined", "bug6-empty-version-segment",
                  "bug6-head-431-never-ends", "bug6-head-431-complete", "fuzz-head-with-undecodable-body"],
}


def replay(target: str, name: str) -> None:
    load(target)((CORPUS / target / name).read_bytes())


@pytest.mark.parametrize(("target", "path"), CASES, ids=[f"{t}/{p.name}" for t, p in CASES])
def test_corpus_input_keeps_the_contract(target: str, path: Path) -> None:
    load(target)(path.read_bytes())


def test_every_target_has_a_corpus_and_every_bug_its_reproducer() -> None:
    for target in TARGETS:
        assert corpus_files(target), target
    for target, names in REPRODUCERS.items():
        missing = set(names) - {p.name for p in corpus_files(target)}
        assert not missing, f"{target}: {sorted(missing)}"


def test_committed_corpus_is_what_seeds_py_writes() -> None:
    """fuzz/seeds.py documents how each file was made; an edit there must be written (python -m fuzz seeds)."""
    from fuzz.seeds import corpus

    for target, files in corpus().items():
        for name, data in files.items():
            assert (CORPUS / target / name).read_bytes() == data, f"{target}/{name}: run python -m fuzz seeds"


# ---- the guard works: put a fixed bug back, and its reproducer fails ----------------------------
def test_replay_fails_when_shapes_are_not_checked_again(monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.front.http.codec as http_codec

    monkeypatch.setattr(http_codec, "check_shape", lambda name, shape: math.prod(shape))  # the old, naive count
    with pytest.raises(ValueError):  # numpy's, escaping the decoder: bug 1
        replay("http_body", "bug1-empty-shape-huge-dims-binary")
    with pytest.raises(AssertionError, match="500"):  # through the front: a 500, not a 400
        replay("http_wire", "bug1-decode-triggers-pipelined")


def test_replay_fails_when_uneven_nesting_is_accepted_again(monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.front.http.codec as http_codec

    def lenient(name: str, data: object) -> list:
        flat: list = []
        stack = [data]
        while stack:
            x = stack.pop()
            if isinstance(x, list):
                stack.extend(reversed(x))
            else:
                flat.append(x)
        return flat

    monkeypatch.setattr(http_codec, "_regular_leaves", lenient)
    with pytest.raises(AssertionError, match="reference refuses"):  # bug 6: accepted, and check_decoded says so
        replay("http_body", "bug6-uneven-nesting-bytes")


def test_replay_fails_when_the_grpc_empty_shape_check_goes(monkeypatch: pytest.MonkeyPatch) -> None:
    import gateway.front.grpc.codec as grpc_codec

    monkeypatch.setattr(grpc_codec, "MAX_ELEMENTS", 2**200)
    with pytest.raises(ValueError):  # bug 5
        replay("grpc_request", "bug5-empty-shape-huge-dims-raw")
