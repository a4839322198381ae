"""The ``harness-backends`` command: every backend config, whether it can run here, and why not.

A row is one ``backend=<config>`` choice (``conf/backend/*.yaml`` and plugins' own),
probed with that config's options, because a variant can be unavailable where its
base is fine: ``pytorch_cuda`` is the ``pytorch`` plugin with ``device: cuda`` and needs
a GPU that ``pytorch`` does not. A registered backend without any config file gets a
row of its own, probed with its default options.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any, Sequence

from rich.markup import escape
from rich.table import Table


@dataclass(frozen=True)
class Choice:
    """A ``backend=<config>`` option: its config name, the plugin backend it selects, its options."""

    config: str
    backend: str
    options: dict[str, Any]


def parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="harness-backends",
        description="List every backend config (backend=<config>), the plugin package behind it, whether it "
        "is available on this machine (probed with that config's options), why not, and its devices.",
    )


def choices(searchpath: list[str], registered: Sequence[str]) -> list[Choice]:
    """Every backend config option composed as a run would see it, plus registered backends without one."""
    found = _composed(searchpath)
    covered = {choice.backend for choice in found}
    found += [Choice(name, name, {}) for name in registered if name not in covered]
    return sorted(found, key=lambda choice: (choice.backend, choice.config != choice.backend, choice.config))


def _composed(searchpath: list[str]) -> list[Choice]:
    """Each backend option composed by Hydra (about 150 ms apiece), kept in the cache
    under a key of every backend file's path, size and mtime, so only an edit composes again."""
    import json

    from harness import __version__, cache
    from harness.compose import group_fingerprint

    key = cache.content_key("backend-choices/1", __version__, group_fingerprint(searchpath, "backend"))
    path = cache.cache_root() / "listings" / f"backends-{key}.json"
    try:
        return [Choice(**item) for item in json.loads(path.read_text(encoding="utf-8"))]
    except (OSError, ValueError, TypeError):
        pass
    found = _compose_each(searchpath)
    try:
        cache.atomic_write(path, json.dumps([vars(choice) for choice in found]))
    except (OSError, TypeError, ValueError):  # an unwritable cache or an option that is not JSON: compose next time too
        pass
    return found


def _compose_each(searchpath: list[str]) -> list[Choice]:
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from harness.compose import CONFIG_MODULE, group_options

    extra = [f"hydra.searchpath=[{','.join(searchpath)}]"] if searchpath else []
    found: list[Choice] = []
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            for option in group_options(searchpath)["backend"]:
                try:
                    cfg = compose(config_name="config", overrides=[f"backend={option}", *extra])
                    section: dict[str, Any] = OmegaConf.to_container(cfg.backend, resolve=True)  # type: ignore[assignment]
                except Exception:  # a config that does not compose is a run-time error; listed as such below
                    section = {"name": option}
                name = str(section.pop("name", option))
                found.append(Choice(option, name, section))
    finally:
        GlobalHydra.instance().clear()
    return found


def main(argv: Sequence[str] | None = None) -> None:
    parser().parse_args(argv)
    from harness import ui
    from harness.errors import ConfigError, HarnessError
    from harness.plugins import get_plugins
    from harness.validation import typed

    plugins = get_plugins()
    table = Table(title="harness backends (select with backend=<config>; a variant names its plugin backend in brackets)", title_justify="left")
    for column in ("backend", "package", "version", "available", "reason", "devices"):
        table.add_column(column)
    for choice in choices(plugins.config_searchpath(), sorted(plugins.registry.backends)):
        backend = plugins.registry.backends.get(choice.backend)
        origin = plugins.registry.plugin_of("backends", choice.backend) if backend else None
        version = ""
        try:
            if backend is None:
                raise ConfigError(f"no installed plugin registers backend '{choice.backend}'", "install the plugin package that provides it")
            availability = backend.probe(typed(backend.options_type, choice.options, "backend"))
            available, reason, devices = availability.available, availability.reason, ", ".join(availability.devices)
            version = availability.versions.get(choice.backend, "")
        except HarnessError as exc:  # the config's options do not validate, or no plugin has this backend
            available, reason, devices = False, exc.one_line(), ""
        except Exception as exc:  # a plugin raising in probe is reported, not fatal
            available, reason, devices = False, f"probe raised {type(exc).__name__}: {exc}", ""
        table.add_row(
            escape(choice.config if choice.config == choice.backend else f"{choice.config} ({choice.backend})"),
            escape(origin.package if origin else "?"),
            escape(version or (origin.version if origin else "?")),
            "[green]yes[/]" if available else "[red]no[/]",
            escape(" ".join(str(reason).split())),
            escape(devices),
        )
    from rich.console import Console

    Console(highlight=False, width=None if sys.stdout.isatty() else 240).print(table)  # piped: reasons on one line
    for problem in plugins.problems:
        ui.warning(problem.warning())
    for line in plugins.deprecations:
        ui.warning(line)
    sys.exit(0)


if __name__ == "__main__":
    main()
