"""High-performance KServe v2 / Triton-protocol inference gateway.

Public API: ``Gateway`` (the in-process pipeline, no sockets) and ``ServerSettings``.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["Gateway", "ServerSettings", "__version__"]


def __getattr__(name: str):  # lazy: keep `import gateway` cheap for the CLI and tools
    if name == "Gateway":
        from gateway.embedded import Gateway

        return Gateway
    if name == "ServerSettings":
        from gateway.settings import ServerSettings

        return ServerSettings
    raise AttributeError(name)
