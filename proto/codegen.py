"""Compile proto/*.proto into one serialized FileDescriptorSet (run by setup.py and by hand:
``python proto/codegen.py`` writes gateway/grpc_gen/).

No ``*_pb2.py`` is generated: generated Python is tied to the protobuf and grpcio versions of the
generator (see gateway/pb.py), a descriptor set is not. Next to it goes the sha256 of the sources
it was built from, so a test can detect a stale build without protoc at run time.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

DESCRIPTOR_SET = "descriptors.binpb"
DIGEST = "descriptors.sha256"


def sources_digest(proto_dir: Path) -> str:
    """sha256 over the names and bytes of proto_dir/*.proto, in name order."""
    h = hashlib.sha256()
    for p in sorted(Path(proto_dir).glob("*.proto")):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def generate_protos(proto_dir: Path, out_dir: Path) -> None:
    """Write out_dir/descriptors.binpb (every file with its imports, dependencies first) and
    out_dir/descriptors.sha256."""
    from grpc_tools import protoc  # build-time dependency (pyproject build-system.requires)

    protos = sorted(Path(proto_dir).glob("*.proto"))
    if not protos:
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / DESCRIPTOR_SET
    args = ["grpc_tools.protoc", f"-I{proto_dir}", f"--descriptor_set_out={target}", "--include_imports",
            *[str(p) for p in protos]]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed to compile proto/*.proto")
    (out_dir / DIGEST).write_text(sources_digest(proto_dir) + "\n")
    for old in out_dir.glob("*_pb2*.py*"):  # left over from builds before the descriptor set
        old.unlink()
    for old in ("_pool.py", "__init__.py"):
        (out_dir / old).unlink(missing_ok=True)


if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent
    generate_protos(root / "proto", root / "gateway" / "grpc_gen")
    sys.exit(0)
