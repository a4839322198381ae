"""The hook API of harness plugins: every hook a plugin may implement.

Hooks are grouped by lifecycle. A plugin is a module (or object) registered under
the ``harness`` entry-point group; it implements any subset of these hooks with
``@harness.hookimpl``. Built-in backends and scenarios are plugins loaded the same
way. See docs/plugins.md for the full guide.

``PLUGIN_API_VERSION`` is the version of this API. A plugin may declare the major
version it was built for as a module attribute ``HARNESS_PLUGIN_API = "2"``; a plugin
built for another major version is refused with a message naming it, except the
previous major (:data:`DEPRECATED_API_MAJORS`), which still loads, with a warning, for
one release. ``from harness import hookimpl`` is the marker for implementations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from harness.registry import Registry

PROJECT = "harness"
PLUGIN_API_VERSION = "2.0"
#: Majors still loaded, with a deprecation warning (API 1: ``Backend.version()`` and
#: ``Backend.device()`` fill the record, session metrics are merged at the top of ``metrics``).
DEPRECATED_API_MAJORS = ("1",)

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- registration (called once, when the plugin manager is built) -----------------


@hookspec
def harness_register_backends(registry: "Registry") -> None:
    """Register backend classes.

    :param registry: call ``registry.add_backend(BackendSubclass)`` for each backend
        this plugin provides. A name already taken is an error naming both plugins.
    """


@hookspec
def harness_register_scenarios(registry: "Registry") -> None:
    """Register scenario kinds.

    :param registry: call ``registry.add_scenario(ScenarioSubclass)``; the class's
        ``kind`` is what ``scenario.kind`` in config selects.
    """


# --- configuration (called when the Hydra app composes its config) ----------------


@hookspec
def harness_config_searchpath() -> list[str]:
    """Return Hydra config search-path entries this plugin contributes.

    Each entry is ``pkg://your_package.conf`` or ``file:///abs/path``; the folder may
    hold ``backend/<name>.yaml``, ``scenario/<name>.yaml`` and so on, so that
    ``backend=<name>`` resolves without editing this repository. Results of all
    plugins are concatenated.
    """
    raise NotImplementedError  # a specification: pluggy never calls its body


# --- run lifecycle (called by the runner, in this order) --------------------------


@hookspec
def harness_run_start(spec: Any) -> None:
    """Called before a run starts, with the validated :class:`harness.config.RunSpec`."""


@hookspec
def harness_record_written(record: dict[str, Any], path: str) -> None:
    """Called after a record has been written atomically to ``path``."""
