"""Compiled hot path (Cython sources in the top-level ``_native/`` directory).

Importing this package fails loudly when the extensions were not built: there is no
pure-Python fallback, because a silent fallback would turn a build problem into a 10x
slowdown that nobody notices. Rebuild with ``pip install -e .`` (or ``python setup.py
build_ext --inplace``).
"""

from __future__ import annotations

__all__ = ["bytestensor", "hist", "inferenc", "jsonnum", "pack"]

try:
    from gateway._native import bytestensor, hist, inferenc, jsonnum, pack  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "gateway's compiled extensions (gateway._native.*) are missing or failed to load: "
        f"{exc}. Build them with `pip install -e .` or `python setup.py build_ext --inplace`."
    ) from exc
