"""The command-line check: every problem as one line with exit 2, before anything runs.

Hydra reports bad input over several lines and, in a sweep, only when it reaches the
job; so the CLI first reads the command line the way Hydra documents it (flags, then
overrides in Hydra's override grammar, parsed with Hydra's public
``OverridesParser``), and checks it: override syntax, group choices, the number of
jobs a ``-m`` sweep makes (refused above :data:`MAX_JOBS`), and each job composed
and validated (:func:`harness.compose.validate`, preflight included). The validated
jobs are kept (:attr:`Checked.jobs`) so that the run validates nothing twice.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import math
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from harness import compose
from harness.errors import ConfigError
from harness.registry import Registry

#: Most sweep combinations composed up front; beyond it, a covering subset is composed.
MAX_PRECHECK_JOBS = 64
#: Sweeps with more jobs than this are not listed up front (Hydra will list them).
MAX_SWEEP_VALUES = 100_000
#: Largest sweep run without asking; ``HARNESS_MAX_JOBS=<n>`` raises it (a typo such as
#: ``range(1,1000001)`` would otherwise queue a million measurements).
MAX_JOBS = 1000
MAX_JOBS_ENV = "HARNESS_MAX_JOBS"


def _parser() -> argparse.ArgumentParser:
    """Hydra's documented command-line flags (``--help`` of any Hydra app), then the overrides."""
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--help", "-h", action="store_true")
    parser.add_argument("--hydra-help", action="store_true")
    parser.add_argument("--version", action="store_true")
    parser.add_argument("--cfg", "-c", choices=["job", "hydra", "all"])
    parser.add_argument("--resolve", action="store_true")
    parser.add_argument("--package", "-p")
    parser.add_argument("--run", "-r", action="store_true")
    parser.add_argument("--multirun", "-m", action="store_true")
    parser.add_argument("--shell-completion", "-sc", action="store_true")
    parser.add_argument("--config-path", "-cp")
    parser.add_argument("--config-name", "-cn")
    parser.add_argument("--config-dir", "-cd")
    parser.add_argument("--experimental-rerun")
    parser.add_argument("--info", "-i", const="all", nargs="?")
    return parser


def parse_args(args: list[str]) -> argparse.Namespace | None:
    """The command line as Hydra reads it; None when Hydra would reject it itself."""
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            return _parser().parse_args(args)
    except (SystemExit, Exception):
        return None


def runs_jobs(parsed: argparse.Namespace | None) -> bool:
    """Whether the command runs jobs (not ``--help``, ``--cfg``, ``--info``...)."""
    if parsed is None:
        return False
    return not (
        parsed.help
        or parsed.hydra_help
        or parsed.version
        or parsed.cfg
        or parsed.info
        or parsed.shell_completion
        or parsed.config_path
        or parsed.config_name
        or parsed.config_dir
        or parsed.experimental_rerun
    )


def with_overrides(args: list[str], parsed: argparse.Namespace | None, extra: list[str]) -> list[str]:
    """``args`` with ``extra`` overrides placed beside the user's own.

    Hydra's parser takes overrides as one positional group: an override after an
    option such as ``--cfg job`` that follows the group would be refused.
    """
    if not extra:
        return list(args)
    if parsed is not None and parsed.overrides:
        at = args.index(parsed.overrides[0])
        return [*args[:at], *extra, *args[at:]]
    return [*args, *extra]


def _flat(text: str | None) -> str | None:
    """Collapse whitespace (a value may contain newlines) so a problem is one line."""
    return None if text is None else " ".join(text.split()) or "invalid command line"


def _parse(overrides: list[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides(overrides)


def _is_glob(override: Any) -> bool:
    return override.value_type is not None and override.value_type.name == "GLOB_CHOICE_SWEEP"


def syntax_problem(overrides: list[str]) -> str | None:
    """One line naming the first override Hydra's grammar cannot parse."""
    for override in overrides:
        try:
            _parse([override])
        except Exception as exc:
            detail = next((ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.startswith("See ")), "")
            return (
                f"cannot parse override '{override}': {detail} "
                "(fix: check brackets and quotes, e.g. key='a,b' for a string with a comma; "
                "grammar: https://hydra.cc/docs/advanced/override_grammar/basic/)"
            )
    return None


def check_group_choices(args: list[str], options: dict[str, list[str]]) -> str | None:
    """Return a one-line problem for an unknown group option in ``args``, else None."""
    return _flat(_group_choice_problem(compose.normalise([a for a in args if not a.startswith("-")]), options))


def _group_choice_problem(overrides: list[str], options: dict[str, list[str]]) -> str | None:
    try:
        parsed = _parse(overrides)
    except Exception:
        return None  # composing reports syntax errors as one line
    for override in parsed:
        group = override.key_or_group
        if group not in compose.GROUPS or override.is_delete() or override.package:
            continue
        try:
            if _is_glob(override):
                values = override.value().filter(options[group])
                if not values:
                    return f"{override.input_line} matches no {group}; available: {', '.join(options[group])} (fix: widen the glob)"
            elif override.is_sweep_override():
                if (_sweep_size(override) or 0) > MAX_SWEEP_VALUES:
                    return None  # not a list of names; Hydra will refuse it
                values = [str(v) for v in override.sweep_string_iterator()]
            else:
                values = [override.get_value_element_as_str()]
        except Exception:
            return f"{override.input_line}: a {group} is chosen by name (fix: {group}=<one of: {', '.join(options[group])}>)"
        for value in values:
            if value not in options[group]:
                return f"unknown {group} '{value}'; available: {', '.join(options[group])} (fix: {group}=<one of them>)"
    return None


def _sweep_size(override: Any) -> int | None:
    """How many values a sweep override enumerates, without enumerating a range."""
    from hydra.core.override_parser.types import RangeSweep

    value = override.value()
    if isinstance(value, RangeSweep):
        if value.start is None or value.stop is None or not value.step:
            return None
        return max(0, math.ceil((value.stop - value.start) / value.step))
    return None


def count_jobs(overrides: list[str], options: dict[str, list[str]] | None = None) -> int | None:
    """How many jobs a ``-m`` sweep of ``overrides`` makes (the cartesian product of the
    swept values), without listing them (a ``range`` is counted, not enumerated); None
    when it cannot tell."""
    try:
        total = 1
        for override in _parse(overrides):
            if not override.is_sweep_override():
                continue
            if _is_glob(override):
                size: Optional[int] = len(override.value().filter((options or {}).get(override.key_or_group, [])))
            else:
                size = _sweep_size(override)
            total *= size if size is not None else len(list(override.sweep_string_iterator()))
        return total
    except Exception:
        return None


def max_jobs() -> int | str:
    """The largest sweep allowed (:data:`MAX_JOBS` or ``$HARNESS_MAX_JOBS``), or a problem line."""
    text = os.environ.get(MAX_JOBS_ENV, "")
    if not text:
        return MAX_JOBS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        return f"{MAX_JOBS_ENV}={text!r} is not a positive number of jobs (fix: export {MAX_JOBS_ENV}=<n>, e.g. 5000)"
    return value


def sweep_jobs(overrides: list[str], options: dict[str, list[str]] | None = None) -> list[list[str]] | str | None:
    """The override list of every job of a ``-m`` sweep, in the order Hydra's basic sweeper
    launches them (the cartesian product, first override outermost); a one-line problem;
    or None for a sweep too large (or too unusual) to list up front, which Hydra handles.
    ``glob(...)`` over a config group expands with ``options``."""
    try:
        axes: list[list[str]] = []
        total = 1
        for override in _parse(overrides):
            key = override.get_key_element()
            if _is_glob(override):
                names = override.value().filter((options or {}).get(override.key_or_group, []))
                if not names:
                    return None
                axes.append([f"{key}={name}" for name in names])
            elif override.is_sweep_override():
                size = _sweep_size(override)
                if size is not None and total * size > MAX_SWEEP_VALUES:
                    return None
                axes.append([f"{key}={value}" for value in override.sweep_string_iterator()])
            else:
                axes.append([f"{key}={override.get_value_element_as_str()}"])
            total *= len(axes[-1])
            if total > MAX_SWEEP_VALUES:
                return None
        return [list(combination) for combination in itertools.product(*axes)]
    except Exception as exc:
        return compose.one_line(exc)


def _covering(jobs: list[list[str]]) -> list[list[str]]:
    """A subset of ``jobs`` in which every value of every swept key appears at least once
    (up to :data:`MAX_PRECHECK_JOBS` values per key)."""
    if len(jobs) <= MAX_PRECHECK_JOBS:
        return jobs
    columns = [list(dict.fromkeys(column)) for column in zip(*jobs)]
    width = min(MAX_PRECHECK_JOBS, max(len(c) for c in columns))
    return [[column[i % len(column)] for column in columns] for i in range(width)]


@dataclass
class Checked:
    """What the check found: a problem (one line) or the number of jobs, and the jobs it
    validated, by their override lists."""

    problem: Optional[str] = None
    count: Optional[int] = None
    jobs: dict[tuple[str, ...], compose.Job] = field(default_factory=dict)


def compose_jobs(
    jobs: list[list[str]], searchpath: list[str], registry: Optional[Registry], found: dict[tuple[str, ...], compose.Job], label_jobs: bool = False
) -> str | None:
    """Compose (and, given the plugin ``registry``, validate) each override list; keep the
    validated jobs in ``found``; return the first problem as one line."""
    from hydra.core.hydra_config import HydraConfig

    try:
        with compose.hydra_context():
            for job in jobs:
                prefix = f"job {' '.join(job)}: " if label_jobs else ""
                try:
                    cfg = compose.compose(job, searchpath, hydra_config=registry is not None)
                except Exception as exc:
                    return prefix + compose.one_line(exc) + compose.typo_hint(exc, job, searchpath)
                if registry is not None:
                    try:
                        found[tuple(compose.normalise(job))] = compose.validate(cfg, registry, searchpath)
                    except ConfigError as exc:
                        return prefix + exc.one_line()
    except Exception as exc:
        return compose.one_line(exc)
    finally:
        if registry is not None:
            HydraConfig.instance().cfg = None  # type: ignore[assignment]
    return None


def _sweep_base_problem(overrides: list[str], searchpath: list[str]) -> str | None:
    """Before a sweep, Hydra applies the overrides that are not swept to the config with
    the *default* group choices; a key that only the swept choices have fails there."""
    base = [o.input_line for o in _parse(overrides) if not o.is_sweep_override()]
    problem = compose_jobs([base], searchpath, None, {})
    if problem is None:
        return None
    return (
        f"{problem} (in a -m sweep, Hydra first applies the overrides that are not swept to the default "
        "config; fix: write ++key=value for a key that only the swept choices have)"
    )


def precheck(args: list[str], searchpath: list[str], options: dict[str, list[str]], registry: Optional[Registry] = None) -> tuple[str | None, int | None]:
    """(one-line problem or None, number of jobs): :func:`check` without the jobs."""
    checked = check(args, searchpath, options, registry)
    return checked.problem, checked.count


def check(args: list[str], searchpath: list[str], options: dict[str, list[str]], registry: Optional[Registry] = None) -> Checked:
    """Check a command line before Hydra runs it.

    ``options`` are the config groups' choices (:func:`harness.compose.group_options`);
    with the plugin ``registry`` every job's values are validated too. Never raises:
    anything unexpected while checking is left for Hydra to report.
    """
    try:
        checked = _check(args, searchpath, options, registry)
        checked.problem = _flat(checked.problem)
        return checked
    except Exception:  # the checker must never be the thing that crashes
        if compose.debug_enabled():
            raise
        return Checked()


def _check(args: list[str], searchpath: list[str], options: dict[str, list[str]], registry: Optional[Registry]) -> Checked:
    parsed = parse_args(args)
    if not runs_jobs(parsed):
        return Checked()
    assert parsed is not None
    overrides = compose.normalise(list(parsed.overrides))
    problem = syntax_problem(overrides) or check_group_choices(overrides, options)
    if problem:
        return Checked(problem)
    found: dict[tuple[str, ...], compose.Job] = {}
    tuning = next((o for o in overrides if o.lstrip("+").startswith(("tune=", "tune@"))), None)
    if not parsed.multirun and tuning:
        return Checked(f"{tuning} runs a study of many trials, which needs Hydra's multirun (fix: harness -m {' '.join(args)}; docs/tuning.md)")
    if not parsed.multirun:
        return Checked(compose_jobs([overrides], searchpath, registry, found), 1, found)
    total, limit = count_jobs(overrides, options), max_jobs()
    if isinstance(limit, str):
        return Checked(limit)
    if total is not None and total > limit:
        return Checked(
            f"this sweep has {total:,} jobs, more than the {limit:,} allowed without asking "
            f"(fix: narrow the sweep, or export {MAX_JOBS_ENV}={total} to run them all)"
        )
    custom_sweeper = bool(tuning) or any(o.lstrip("+~").startswith(("hydra/sweeper", "hydra.sweeper")) for o in overrides)
    jobs = sweep_jobs(overrides, options) if not custom_sweeper else [fixed_part(overrides)]
    if isinstance(jobs, str):
        return Checked(jobs)
    problem = None
    if jobs is not None:
        problem = compose_jobs(_covering(jobs), searchpath, registry, found, label_jobs=len(jobs) > 1)
    if problem is None:
        problem = _sweep_base_problem(overrides, searchpath)
    if problem and "hydra/sweeper" in problem and "optuna" in problem:  # +tune= without the tune extra
        problem += " (fix: pip install 'harness[tune]' for Hydra's Optuna sweeper; docs/tuning.md)"
    return Checked(problem, None if custom_sweeper or jobs is None else len(jobs), found)


def fixed_part(overrides: list[str]) -> list[str]:
    """The one job checked for a sweeper that chooses values itself (Optuna, ``+tune=``):
    every override that is not swept, and the first value of a ``choice``/``range``
    sweep; an ``interval(...)`` (a distribution, not a list of values) is left to the
    sweeper. Sweeps are not expanded: the sweeper decides which combinations run."""
    job = []
    for override in _parse(overrides):
        key = override.get_key_element()
        if not override.is_sweep_override():
            job.append(override.input_line)
        elif not override.is_interval_sweep():
            first = next(iter(override.sweep_string_iterator()), None)
            if first is not None:
                job.append(f"{key}={first}")
    return job
