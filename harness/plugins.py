"""Plugin manager factory: discovers plugins through the ``harness`` entry-point group.

Built once per process by :func:`load_plugins` (never at import time). A plugin that
fails to import, targets another plugin-API major version, implements a hook that
does not exist, or raises while registering is *reported* (``Plugins.problems``) and
skipped; every other plugin keeps working. Set ``HARNESS_TRACE_HOOKS=1`` to print
every hook call. ``HARNESS_PLUGINS=pkg.module,other.module`` loads extra plugin modules
without installing a package (like pytest's ``-p``): handy for local experiments and
the test suite's fault-injection plugins.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Iterable

import pluggy

from harness import hookspecs
from harness.errors import exception_line
from harness.registry import PluginInfo, Registry

ENTRY_POINT_GROUP = "harness"


@dataclass(frozen=True)
class PluginProblem:
    """A plugin that could not be loaded, with a one-line error."""

    name: str
    error: str

    def warning(self) -> str:
        return f"warning: plugin '{self.name}' was skipped: {self.error}"


@dataclass
class Plugins:
    """The loaded plugin manager, the registry it filled, and what went wrong."""

    manager: pluggy.PluginManager
    registry: Registry
    infos: list[PluginInfo] = field(default_factory=list)
    problems: list[PluginProblem] = field(default_factory=list)
    #: Plugin name -> the plugin-API major it declared (absent: not declared).
    api: dict[str, str] = field(default_factory=dict)
    #: One line per plugin loaded under a deprecated API major.
    deprecations: list[str] = field(default_factory=list)

    def legacy(self, table: str, name: str) -> bool:
        """Whether the backend or scenario ``name`` comes from a plugin built for a deprecated API."""
        origin = self.registry.plugin_of(table, name)
        return origin is not None and self.api.get(origin.name) in hookspecs.DEPRECATED_API_MAJORS

    @property
    def hook(self) -> Any:
        return self.manager.hook

    def config_searchpath(self) -> list[str]:
        """Hydra search-path entries contributed by all plugins, in load order."""
        entries: list[str] = []
        for result in self.hook.harness_config_searchpath():
            entries.extend(result or [])
        return entries


def _api_problem(module: Any) -> str | None:
    wanted = getattr(module, "HARNESS_PLUGIN_API", None)
    if wanted is None:
        return None
    ours = hookspecs.PLUGIN_API_VERSION.split(".")[0]
    if str(wanted).split(".")[0] not in (ours, *hookspecs.DEPRECATED_API_MAJORS):
        return f"it was built for plugin API {wanted}, this harness provides {hookspecs.PLUGIN_API_VERSION}; install a plugin release made for this harness"
    return None


def _discover() -> Iterable[tuple[str, str, str, Any]]:
    """Yield (name, package, version, loader) for every entry point of the group,
    then for every module named in ``HARNESS_PLUGINS``."""
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        package = dist.metadata["Name"] if dist is not None else "?"
        version = dist.version if dist is not None else "?"
        yield ep.name, package, version, ep.load
    for module_name in filter(None, (m.strip() for m in os.environ.get("HARNESS_PLUGINS", "").split(","))):
        yield module_name.rsplit(".", 1)[-1], module_name, "local", functools.partial(importlib.import_module, module_name)


def load_plugins(extra: Iterable[tuple[str, Any]] = ()) -> Plugins:
    """Build a plugin manager from entry points plus ``extra`` (name, module) pairs.

    ``extra`` is how tests register a plugin without installing a package.
    """
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    if os.environ.get("HARNESS_TRACE_HOOKS"):
        manager.trace.root.setwriter(lambda msg: print(msg, end="", file=sys.stderr))
        manager.enable_tracing()
    plugins = Plugins(manager=manager, registry=Registry())

    candidates: list[tuple[PluginInfo, Any]] = []
    for name, package, version, loader in _discover():
        try:
            module = loader()
        except Exception as exc:  # a broken plugin must not stop the others
            plugins.problems.append(PluginProblem(name, f"import failed: {exception_line(exc)}"))
            continue
        candidates.append((PluginInfo(name, package, version), module))
    for name, module in extra:
        candidates.append((PluginInfo(name, getattr(module, "__name__", name), "local"), module))

    for info, module in candidates:
        problem = _api_problem(module)
        if problem:
            plugins.problems.append(PluginProblem(info.name, problem))
            continue
        if manager.is_registered(module) or manager.get_plugin(info.name) is not None:
            continue
        declared = getattr(module, "HARNESS_PLUGIN_API", None)
        if declared is not None:
            major = str(declared).split(".")[0]
            plugins.api[info.name] = major
            if major in hookspecs.DEPRECATED_API_MAJORS:
                plugins.deprecations.append(
                    f"warning: plugin '{info.name}' is built for plugin API {declared}, deprecated since "
                    f"{hookspecs.PLUGIN_API_VERSION}; it still works in this release (fix: port it to "
                    "plugin API 2, docs/plugins.md#10-plugin-api-versioning)"
                )
        try:
            manager.register(module, name=info.name)  # raises for a hookimpl whose arguments are not in the spec
            manager.check_pending()  # raises for a hookimpl that matches no spec
        except pluggy.PluginValidationError as exc:
            if manager.is_registered(module):
                manager.unregister(module)
            plugins.problems.append(PluginProblem(info.name, exception_line(exc)))
            continue
        plugins.infos.append(info)

    for info in list(plugins.infos):
        module = manager.get_plugin(info.name)
        others = [p for p in manager.get_plugins() if p is not module]
        plugins.registry._current = info
        try:
            for hook in ("harness_register_backends", "harness_register_scenarios"):
                manager.subset_hook_caller(hook, remove_plugins=others)(registry=plugins.registry)
        except Exception as exc:
            plugins.problems.append(PluginProblem(info.name, f"registration failed: {exception_line(exc)}"))
        finally:
            plugins.registry._current = None
    return plugins


@functools.lru_cache(maxsize=1)
def get_plugins() -> Plugins:
    """The process-wide plugin set used by the CLI (tests call :func:`load_plugins`)."""
    return load_plugins()
