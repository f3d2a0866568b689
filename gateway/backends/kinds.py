"""One factory over several kinds of backend, chosen per model by its ``backend`` setting.

The repository sees one ``BackendFactory``; a repository may mix local onnxruntime models and remote
ones. The composition root says which kinds exist (``compose``, ``app``); a model asking for a kind
that was not given is a configuration error naming the kinds there are.
"""

from __future__ import annotations

from pathlib import Path

from gateway.backends.base import Backend, BackendFactory
from gateway.model_config import ConfigError, ModelConfig


class Backends:
    def __init__(self, **kinds: BackendFactory) -> None:
        """``kinds``: backend name (``onnxruntime``, ``triton``) -> its factory; the first is the
        one whose device checks and file name stand for the repository's local models."""
        self.kinds = kinds
        self.local = next(iter(kinds.values()))
        self.default_filename = self.local.default_filename

    def _of(self, config: ModelConfig) -> BackendFactory:
        f = self.kinds.get(config.backend)
        if f is None:
            raise ConfigError(f"model '{config.name}': config field 'backend' is '{config.backend}', which this "
                              f"server does not run (it has: {', '.join(self.kinds)})")
        return f

    def filename_for(self, config: ModelConfig) -> str:
        return self._of(config).filename_for(config)

    def __call__(self, path: Path, config: ModelConfig) -> Backend:
        return self._of(config)(path, config)

    def check_device(self, device: str) -> None:
        self.local.check_device(device)
