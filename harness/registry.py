"""The registry object plugins fill through the registration hooks.

A registry object (rather than loose hook return values) lets the core name the
plugin that registered each backend or scenario, and refuse duplicate names.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.backend import Backend
from harness.errors import ConfigError
from harness.scenario import Scenario


@dataclass(frozen=True)
class PluginInfo:
    """Where a registered class came from: plugin name, distribution and version."""

    name: str
    package: str
    version: str


class Registry:
    """Backends and scenario kinds by name, each with the plugin that provided it."""

    def __init__(self) -> None:
        self.backends: dict[str, type[Backend]] = {}
        self.scenarios: dict[str, type[Scenario]] = {}
        self.origin: dict[tuple[str, str], PluginInfo] = {}
        self._current: PluginInfo | None = None

    def _claim(self, table: str, name: str) -> None:
        other = self.origin.get((table, name))
        if other is not None:
            mine = self._current.name if self._current else "?"
            raise ConfigError(
                f"{table[:-1]} '{name}' is registered twice: by plugin '{other.name}' and '{mine}'",
                "uninstall one of the two plugin packages",
            )
        if self._current is not None:
            self.origin[(table, name)] = self._current

    def add_backend(self, backend: type[Backend]) -> None:
        """Register a :class:`harness.backend.Backend` subclass under ``backend.name``."""
        self._claim("backends", backend.name)
        self.backends[backend.name] = backend

    def add_scenario(self, scenario: type[Scenario]) -> None:
        """Register a :class:`harness.scenario.Scenario` subclass under ``scenario.kind``."""
        self._claim("scenarios", scenario.kind)
        self.scenarios[scenario.kind] = scenario

    def backend(self, name: str) -> type[Backend]:
        try:
            return self.backends[name]
        except KeyError:
            raise ConfigError(
                f"unknown backend '{name}'; available: {', '.join(sorted(self.backends)) or 'none'}",
                "pick one with backend=<name>, or install the plugin that provides it",
            ) from None

    def scenario(self, kind: str) -> type[Scenario]:
        try:
            return self.scenarios[kind]
        except KeyError:
            raise ConfigError(
                f"unknown scenario kind '{kind}'; available: {', '.join(sorted(self.scenarios)) or 'none'}",
                "set scenario.kind to one of them, or install the plugin that provides it",
            ) from None

    def plugin_of(self, table: str, name: str) -> PluginInfo | None:
        return self.origin.get((table, name))
