"""Tuning: Hydra's Optuna sweeper searches a configuration; each trial is scored from its record.

``harness -m +tune=inference +scenario=bert_fp32 backend=onnxruntime`` selects the preset
``conf/tune/inference.yaml``: Hydra's Optuna sweeper (hydra-optuna-sweeper) proposes a
batch size and the backend's knobs, and each trial is an ordinary harness run: isolated,
validated, with its record. The value handed back to Optuna is *read from that record*
through :data:`OBJECTIVES` (never measured again), so a report, ``harness-compare`` and
the study always agree on what a trial achieved.

Trials never crash the study. A run that failed (any status but ``ok``, or a job that
never produced a record) or that violates the constraint (``tune.max_p99_ms`` on
``metrics.latency_ms.p99``) returns ``tune.penalty`` to Optuna, which ranks it below
every feasible trial; its record keeps the truth, and :func:`trials` labels it
``failed`` or ``infeasible`` for the report. The hydra-optuna-sweeper cannot mark a
trial pruned from the task function's return value, and a NaN makes it abort the study,
hence a finite penalty.

The study lives in ``<results_dir>/optuna.db`` (sqlite) under the stable name
``tune.study``, so running the same command again continues it. See docs/tuning.md.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

from harness import records, sweep
from harness.errors import ConfigError
from harness.identity import RUN_LOCAL_KEYS
from harness.preflight import usable_cores
from harness.validation import choice, require, typed

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class Objective:
    """A record field and the direction that improves it."""

    path: str
    direction: str
    unit: str


#: The documented objective names (``tune.objective``); any dotted record path works too.
OBJECTIVES: dict[str, Objective] = {
    "throughput": Objective("metrics.throughput.samples_per_s", "maximize", "samples/s"),
    "p50": Objective("metrics.latency_ms.p50", "minimize", "ms"),
    "p99": Objective("metrics.latency_ms.p99", "minimize", "ms"),
    "time_to_target": Objective("metrics.training.time_to_target_s", "minimize", "s"),
}
#: The record field ``tune.max_p99_ms`` bounds.
P99 = "metrics.latency_ms.p99"
#: What a failed or infeasible trial returns when ``tune.penalty`` is null.
DEFAULT_PENALTY = {"maximize": 0.0, "minimize": 1e9}
#: Where the study is kept, relative to ``results_dir`` (the presets' ``hydra.sweeper.storage``).
STORAGE_FILE = "optuna.db"


@dataclass
class TuneOptions:
    """The ``tune`` section of a preset (``conf/tune/*.yaml``)."""

    name: str = "inference"
    study: str = "harness"
    objective: str = "throughput"
    direction: str = "maximize"
    max_p99_ms: Optional[float] = None
    penalty: Optional[float] = None
    #: Searched on every backend: config key -> Optuna sweep syntax (``choice(1,8)``, ``interval(1e-5,1e-2)``).
    params: dict[str, str] = field(default_factory=dict)
    #: Searched on one backend only: backend name -> {config key -> sweep syntax}.
    space: dict[str, dict[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        choice(self.direction, ("maximize", "minimize"), "direction")
        require(self.max_p99_ms is None or self.max_p99_ms > 0, "max_p99_ms", f"must be > 0 ms or null, got {self.max_p99_ms}")
        require(bool(self.objective), "objective", f"must name a record field, e.g. one of {', '.join(OBJECTIVES)}")
        named = OBJECTIVES.get(self.objective)
        require(
            named is None or named.direction == self.direction,
            "direction",
            f"{self.objective} improves when it goes {'up' if named and named.direction == 'maximize' else 'down'}: "
            f"use direction={named.direction if named else ''}",
        )

    @property
    def target(self) -> Objective:
        """The record field this study optimises."""
        return OBJECTIVES.get(self.objective) or Objective(self.objective, self.direction, "")

    @property
    def worst(self) -> float:
        """What a failed or infeasible trial returns to Optuna."""
        return float(self.penalty) if self.penalty is not None else DEFAULT_PENALTY[self.direction]

    def searched(self, backend: str) -> dict[str, str]:
        """The keys this preset searches on ``backend`` (generic first)."""
        return {**self.params, **self.space.get(backend, {})}


def options(section: Any) -> TuneOptions:
    """The validated ``tune`` section (a mapping or a DictConfig); a one-line ConfigError otherwise."""
    from omegaconf import DictConfig, OmegaConf

    node = OmegaConf.to_container(section, resolve=True) if isinstance(section, DictConfig) else section
    return typed(TuneOptions, node, "tune")


def lookup(record: Mapping[str, Any], dotted: str) -> Any:
    """``record["metrics"]["throughput"]["samples_per_s"]`` for ``metrics.throughput.samples_per_s``; None if absent."""
    node: Any = record
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass(frozen=True)
class Verdict:
    """A trial judged from its record: ``status`` ok | infeasible | failed; ``value`` the
    objective the record holds (None when absent); ``returned`` what Optuna receives."""

    status: str
    value: Optional[float]
    returned: float
    reason: str = ""


def evaluate(record: Optional[Mapping[str, Any]], tune: TuneOptions) -> Verdict:
    """Score one trial from its record (None: the job produced no record)."""
    if record is None:
        return Verdict("failed", None, tune.worst, "no record (the job stopped before running; see the sweep summary)")
    if record.get("status") != "ok":
        return Verdict("failed", None, tune.worst, f"{record.get('status')}: {record.get('reason', '')}".strip())
    objective = tune.target
    value = _number(lookup(record, objective.path))
    if value is None:
        why = "target accuracy not reached" if tune.objective == "time_to_target" else f"the record has no {objective.path}"
        status = "infeasible" if tune.objective == "time_to_target" and lookup(record, "metrics.training") else "failed"
        return Verdict(status, None, tune.worst, why)
    if tune.max_p99_ms is not None:
        p99 = _number(lookup(record, P99))
        if p99 is None:
            return Verdict("failed", value, tune.worst, f"the record has no {P99} to check tune.max_p99_ms against")
        if p99 > tune.max_p99_ms:
            return Verdict("infeasible", value, tune.worst, f"p99 {p99:.3f} ms > tune.max_p99_ms {tune.max_p99_ms:g} ms")
    return Verdict("ok", value, value)


# --- inside the sweep -------------------------------------------------------------------------------


def suggest(config: Any, trial: Any) -> None:
    """``hydra.sweeper.custom_search_space``: propose ``tune.params`` and the selected
    backend's ``tune.space`` entry on ``trial``.

    The Optuna sweeper turns every parameter a trial holds into an override, so keys
    proposed here reach the job like ``hydra.sweeper.params`` ones. A key already fixed
    on the command line (a trial user attribute) or already searched is left alone.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override
    from optuna.distributions import BaseDistribution, CategoricalDistribution

    tune = options(config.tune)
    parser = OverridesParser.create()
    bounded = cores_bound_keys(str(config.backend.name))
    for key, syntax in tune.searched(str(config.backend.name)).items():
        if key in trial.params or key in trial.user_attrs:
            continue
        distribution = create_optuna_distribution_from_override(parser.parse_override(f"{key}={syntax}"))
        if not isinstance(distribution, BaseDistribution):
            distribution = CategoricalDistribution([distribution])
        if isinstance(distribution, CategoricalDistribution) and key in bounded:
            distribution = CategoricalDistribution(within_cores(distribution.choices, usable_cores()))
        trial._suggest(key, distribution)  # what the sweeper itself calls for hydra.sweeper.params


def cores_bound_keys(backend: str) -> set[str]:
    """``backend.<field>`` keys of ``backend``'s options declared with
    :func:`harness.config.cores_bound` (thread and stream counts); empty for an unknown backend."""
    import dataclasses

    from harness.plugins import get_plugins

    try:
        options_type = get_plugins().registry.backend(backend).options_type
    except Exception:  # an unknown backend: the run itself says so, in one line
        return set()
    if not dataclasses.is_dataclass(options_type):
        return set()
    return {f"backend.{f.name}" for f in dataclasses.fields(options_type) if f.metadata.get("bounded_by") == "cores"}


def within_cores(choices: Any, cores: int) -> tuple[Any, ...]:
    """The choices of a thread or stream count that this machine can tell apart.

    Preflight clamps a count above the usable cores to that many, so on 2 cores 4, 8
    and 16 would all run as 2 while the study took them for different settings and
    spent trials on them. Non-integer choices and 0 (the library's own choice) stay;
    if nothing is left the choices are kept as given.
    """
    kept = tuple(c for c in choices if isinstance(c, bool) or not isinstance(c, int) or c <= cores)
    return kept or tuple(choices)


#: The studies trials of this process belonged to: study name -> (results_dir, options).
_STUDIES: dict[str, tuple[str, TuneOptions]] = {}


def _outcome(num: int) -> Optional[sweep.Outcome]:
    """The outcome job ``num`` of this process reported to the sweep ledger."""
    folder = os.environ.get(sweep.LEDGER_ENV)
    if not folder or not Path(folder).is_dir():
        return None
    mine = [o for o in sweep.read_ledger(Path(folder)) if o.num == num]
    return mine[-1] if mine else None


def trial_value(cfg: Any, num: int) -> float:
    """The task function's return value for a tuning trial: job ``num``'s record, scored.

    Prints one line saying what Optuna receives and why.
    """
    from harness import ui

    try:
        tune = options(cfg.tune)
    except ConfigError as exc:  # the check validated the fixed part; a proposed value can still be wrong
        ui.error(f"job {num}: {exc.one_line()}")
        return DEFAULT_PENALTY.get(str(cfg.tune.get("direction")), 0.0)
    _STUDIES[tune.study] = (str(cfg.results_dir), tune)
    outcome = _outcome(num)
    record = records.read(outcome.record) if outcome is not None and outcome.record else None
    verdict = evaluate(record, tune)
    objective = tune.target
    shown = "-" if verdict.value is None else f"{verdict.value:,.4g} {objective.unit}".strip()
    line = f"job {num}: {tune.objective} {shown} -> {verdict.status}"
    if verdict.status != "ok":
        line += f" ({verdict.reason}); Optuna receives the penalty {verdict.returned:g}"
    (ui.stage if verdict.status == "ok" else ui.warning)(line)
    return verdict.returned


# --- reading a study back from records ---------------------------------------------------------------


def is_trial(record: Mapping[str, Any]) -> bool:
    """Whether ``record`` is a tuning trial (its config carries a ``tune`` section)."""
    return isinstance(lookup(record, "config.tune.study"), str)


def trials(recs: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Every study among ``recs``: study name -> a DataFrame of its trials in run order
    (``trial``, ``status``, ``objective``, ``returned``, the searched keys, ``reason``,
    ``run_id``), each judged by the ``tune`` options it ran with, with ``attrs``: ``objective`` (name), ``direction``, ``unit``, ``best``
    (the index of the best feasible trial or None), ``params`` (the searched keys)."""
    import pandas as pd

    studies: dict[str, list[Mapping[str, Any]]] = {}
    for record in recs:
        if is_trial(record):
            studies.setdefault(str(lookup(record, "config.tune.study")), []).append(record)
    out: dict[str, Any] = {}
    for study, members in sorted(studies.items()):
        members = sorted(members, key=lambda r: str(r.get("created", "")))
        try:
            tune = options(lookup(members[-1], "config.tune"))
        except ConfigError:
            continue
        backend = str(lookup(members[-1], "backend.name"))
        keys = list(tune.searched(backend))
        for record in members:  # keys the command line swept (hydra.sweeper.params) show too
            for override in lookup(record, "job.overrides") or []:
                key = str(override).split("=", 1)[0].lstrip("+~")
                if key.split(".")[0] in RUN_LOCAL_KEYS or key.startswith("hydra"):
                    continue  # how the trial ran (a bound, a folder), not what it measured
                if key not in keys and len({_config_value(r, key) for r in members}) > 1:
                    keys.append(key)
        rows = []
        for number, record in enumerate(members):
            verdict = evaluate(record, _own_options(record, tune))  # as Optuna was told at the time
            row: dict[str, Any] = {"trial": number, "status": verdict.status, "objective": verdict.value, "returned": verdict.returned}
            row.update({key: _config_value(record, key) for key in keys})
            row.update({"reason": verdict.reason, "run_id": record.get("run_id", ""), "created": record.get("created", "")})
            rows.append(row)
        frame = pd.DataFrame(rows)
        feasible = frame[frame["status"] == "ok"]
        best = None
        if not feasible.empty:
            values = pd.to_numeric(feasible["objective"])
            best = int(values.idxmax() if tune.direction == "maximize" else values.idxmin())
        frame.attrs.update(
            objective=tune.objective, direction=tune.direction, unit=tune.target.unit, best=best, params=keys, max_p99_ms=tune.max_p99_ms, backend=backend
        )
        out[study] = frame
    return out


def _own_options(record: Mapping[str, Any], fallback: TuneOptions) -> TuneOptions:
    try:
        return options(lookup(record, "config.tune"))
    except ConfigError:
        return fallback


def _config_value(record: Mapping[str, Any], key: str) -> Any:
    """The value the run used for an override key (``backend.threads``; a group such as
    ``backend`` shows its ``name``)."""
    value = lookup(record.get("config") or {}, key)
    if isinstance(value, Mapping):
        value = value.get("name")
    return value if not isinstance(value, (list, dict)) else str(value)


def best_overrides(frame: Any) -> list[str]:
    """The best trial's searched keys as overrides (to re-run it alone or compare it)."""
    best = frame.attrs.get("best")
    if best is None:
        return []
    row = frame.loc[best]
    return [f"{key}={row[key]}" for key in frame.attrs.get("params", []) if row[key] is not None]


def importance(frame: Any) -> dict[str, float]:
    """Parameter importance over the feasible trials (Optuna's mean-decrease-impurity
    evaluator on an in-memory copy of the study); empty when Optuna is missing or fewer
    than three feasible trials differ. (Optuna 2's default fANOVA evaluator fails on
    current NumPy.)"""
    feasible = frame[frame["status"] == "ok"]
    keys = [k for k in frame.attrs.get("params", []) if feasible[k].astype(str).nunique() > 1] if len(feasible) >= 3 else []
    if not keys:
        return {}
    try:
        import optuna
        from optuna.distributions import CategoricalDistribution
        from optuna.importance import MeanDecreaseImpurityImportanceEvaluator
    except ImportError:
        return {}
    import warnings

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study = optuna.create_study(direction=frame.attrs.get("direction", "maximize"))
    choices = {key: sorted(feasible[key].astype(str).unique()) for key in keys}
    for _, row in feasible.iterrows():
        study.add_trial(
            optuna.trial.create_trial(
                params={key: str(row[key]) for key in keys},
                distributions={key: CategoricalDistribution(choices[key]) for key in keys},
                value=float(row["objective"]),
            )
        )
    ranked = optuna.importance.get_param_importances(study, evaluator=MeanDecreaseImpurityImportanceEvaluator(seed=0))
    return {key: float(value) for key, value in ranked.items()}


def best_text(trials: pd.DataFrame) -> str:
    """The best feasible trial and how to run it alone, or why there is none."""
    best = trials.attrs.get("best")
    if best is None:
        return "no feasible trial: every trial failed or violated the constraint"
    row = trials.loc[best]
    overrides = " ".join(best_overrides(trials)) or "the fixed configuration"
    value = f"{row['objective']:,.4g} {trials.attrs.get('unit', '')}".strip()
    return f"best: trial {row['trial']}, {trials.attrs['objective']} {value} (run {row['run_id']}): {overrides}"


def display(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials table as strings: trial, status, objective, each searched key, reason."""
    best = trials.attrs.get("best")
    columns = ["trial", "status", "objective", *trials.attrs.get("params", []), "reason"]
    shown = trials[columns].copy().astype("object")
    shown["objective"] = ["-" if _number(value) is None else f"{value:,.4g}" for value in trials["objective"]]
    shown["status"] = [f"{s} (best)" if i == best else s for i, s in zip(trials.index, trials["status"])]
    return shown.map(lambda value: "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value))


def show_studies() -> None:
    """After a tuning sweep: each study's trials so far (all runs of it) and the best configuration."""
    from rich.markup import escape
    from rich.table import Table

    from harness import results, ui

    for study, (results_dir, tune) in _STUDIES.items():
        recs = [records.read(path) for path in results.record_files(results_dir)]
        frame = trials([r for r in recs if lookup(r, "config.tune.study") == study]).get(study)
        if frame is None:
            continue
        shown = display(frame)
        table = Table(title=f"tuning study {escape(study)} ({len(frame)} trials, {tune.direction} {tune.objective})", title_justify="left")
        for column in shown.columns:
            table.add_column(escape(str(column)), overflow="fold")
        for row in shown.itertuples(index=False):
            table.add_row(*(escape(str(value)) for value in row))
        ui.out.print(table)
        if frame.attrs["best"] is None:
            ui.error(
                f"study {study}: no feasible trial yet (fix: relax the bound, tune.max_p99_ms or scenario.target_accuracy, train longer, or run more trials)"
            )
        else:
            ui.out.print(best_text(frame), soft_wrap=True, markup=False, highlight=False)
