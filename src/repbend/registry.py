"""One small registry type for every pluggable kind (methods, benchmarks, attacks, judges)."""
from __future__ import annotations

from .errors import ConfigError


class Registry(dict):
    """name -> factory. ``register`` is a decorator; ``get`` errors list what exists."""

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, name: str):
        def add(factory):
            if name in self:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self[name] = factory
            return factory

        return add

    def get(self, name: str):
        if name not in self:
            raise ConfigError(f"{self.kind} {name!r} is unknown; available: {', '.join(sorted(self))}")
        return self[name]
