"""The ``harness`` command: a Hydra app that turns a config into one record per run.

``harness +scenario=bert_int8 backend=tensorrt`` composes ``conf/`` (plus config
folders contributed by plugins), validates it into a RunSpec, runs it and writes
the record. Group choices are checked before Hydra starts so that an unknown
backend or scenario is one line with the options, not a stack of Hydra messages.
"""

from __future__ import annotations

import os
import sys
from importlib import resources
from pathlib import Path
from typing import Any

GROUPS = ("backend", "scenario", "model", "dataset")
CONFIG_MODULE = "harness.conf"

_exit_codes: list[int] = []


def _list_options(entry: str, group: str) -> set[str]:
    """Config names of ``group`` under one Hydra search-path entry (pkg:// or file://)."""
    if entry.startswith("pkg://"):
        try:
            folder = resources.files(entry[len("pkg://"):]).joinpath(group)
        except ModuleNotFoundError:
            return set()
    else:
        folder = Path(entry[len("file://"):] if entry.startswith("file://") else entry) / group
    if not folder.is_dir():
        return set()
    return {item.name[: -len(".yaml")] for item in folder.iterdir() if item.name.endswith(".yaml")}


def group_options(searchpath: list[str]) -> dict[str, list[str]]:
    """Every option of each config group, from the core's conf/ and plugins' folders."""
    entries = [f"pkg://{CONFIG_MODULE}", *searchpath]
    return {g: sorted(set().union(*(_list_options(e, g) for e in entries))) for g in GROUPS}


def check_group_choices(args: list[str], options: dict[str, list[str]]) -> str | None:
    """Return a one-line problem for an unknown group option in ``args``, else None."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [a for a in args if not a.startswith("-")]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception:
        return None  # Hydra reports syntax errors itself
    for override in parsed:
        group = override.key_or_group
        if group not in GROUPS or override.is_delete() or override.package:
            continue
        if group == "scenario" and not override.is_add():
            value = override.input_line.split("=", 1)[-1]
            return f"scenario must be added with a plus: +scenario={value} (it is not in the defaults list)"
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.get_value_element_as_str()]
        for value in values:
            if value not in options[group]:
                return f"unknown {group} '{value}'; available: {', '.join(options[group])} (fix: {group}=<one of them>)"
    return None


def compose_problem(args: list[str], searchpath: list[str]) -> str | None:
    """Compose the config once with Hydra's compose API; return its error as one line.

    Hydra reports composition errors over several lines; composing first lets the CLI
    print one line with the fix instead. Sweeps (``-m``) are left to Hydra.
    """
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    overrides = [a for a in args if not a.startswith("-")]
    if searchpath:
        overrides.append(f"hydra.searchpath=[{','.join(searchpath)}]")
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            compose(config_name="config", overrides=overrides)
    except Exception as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        kept = [ln for ln in lines if not ln.startswith(("full_key:", "object_type=", "reference_type="))]
        return "; ".join(ln.rstrip(".") for ln in kept) or type(exc).__name__
    finally:
        GlobalHydra.instance().clear()
    return None


def _run_one(cfg: Any) -> int:
    from harness import records, ui
    from harness.config import build_spec
    from harness.errors import EXIT_CODES, ConfigError
    from harness.plugins import get_plugins
    from harness.runner import execute

    plugins = get_plugins()
    for problem in plugins.problems:
        ui.warning(problem.warning())
    try:
        spec = build_spec(cfg, plugins.registry)
    except ConfigError as exc:
        ui.error(exc.one_line())
        return exc.exit_code
    ui.stage(f"{spec.scenario_name} ({spec.scenario_kind}) on {spec.backend_name}, model {spec.model.name}")
    record = execute(spec, plugins, status=ui.stage, progress=ui.progress)
    ui.end_progress()
    path = records.write(record, spec.results_dir)
    plugins.hook.harness_record_written(record=record, path=str(path))
    ui.out.print(ui.record_table([record]))
    ui.out.print(f"record: {path}", soft_wrap=True)
    if record["status"] != "ok":
        ui.error(f"{record['status']}: {record['reason']}")
    return EXIT_CODES.get(record["status"], 1)


def _header(plugins: Any) -> str:
    from harness import __version__

    names = ", ".join(f"{p.name} {p.version}" for p in plugins.infos)
    return f"harness {__version__} · plugins: {names}"


def main() -> None:
    """Console-script entry point."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from harness import ui
    from harness.plugins import get_plugins

    plugins = get_plugins()
    searchpath = plugins.config_searchpath()
    args = sys.argv[1:]
    if not any(a in ("--help", "-h", "--hydra-help", "--info") or a.startswith("--cfg") for a in args):
        problem = check_group_choices(args, group_options(searchpath))
        if problem is None and not any(a in ("-m", "--multirun") for a in args):
            problem = compose_problem(args, searchpath)
        if problem:
            for issue in plugins.problems:
                ui.warning(issue.warning())
            ui.error(problem)
            sys.exit(2)
        ui.stage(_header(plugins))
    if searchpath:
        sys.argv.append(f"hydra.searchpath=[{','.join(searchpath)}]")

    import hydra

    @hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name="config")
    def app(cfg: Any) -> None:
        _exit_codes.append(_run_one(cfg))

    app()
    sys.exit(max(_exit_codes, default=0))


if __name__ == "__main__":
    main()
