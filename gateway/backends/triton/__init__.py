"""The ``triton`` backend: batches forwarded to remote KServe v2 gRPC servers (see ``backend``)."""

from gateway.backends.triton.backend import TritonBackend, TritonFactory

__all__ = ["TritonBackend", "TritonFactory"]
