"""``harness-compare``: a regression gate for CI, baseline records against candidate records.

    harness-compare BASELINE_DIR CANDIDATE_DIR [--threshold 5%] [--metric throughput|p50|p99]
                    [--format table|markdown|json] [--any-machine] [--ignore KEYS] [--tuned]

Rows are matched by configuration identity (:mod:`harness.identity`: the config without
run-local keys, machine-local paths replaced by content digests) and machine, so two
checkouts on two CI runners compare like with like. Config keys that only one side
has anywhere (an option the candidate's harness added) are left out of the match, or
every row would be "only in one side" after each new option. ``--ignore KEYS`` leaves
more keys out; ``--tuned`` reduces the candidate side to the best trial of each tuning
study (``+tune=``, :mod:`harness.tuning`) and ignores the keys the study searched, so the
tuned configuration is judged against the defaults run of the same model and scenario.
Throughput compared across batch sizes scales the latency-sample bootstrap by the batch
ratio (throughput is batch x calls / total latency).

Each matched row gets a verdict from the change of its metric (median over repeats)
and whether that change is *significant*:

- **raw samples** on both sides (single-stream latency samples, repeats pooled): a
  seeded percentile bootstrap (``scipy.stats.bootstrap``, 2000 resamples, 95%) of the
  ratio candidate/baseline of the p50 or p99, or for throughput of the inverse ratio of
  mean latencies (single-stream throughput is batch x calls / total latency);
- else the **bootstrap intervals already in the records** (``metrics.noise.p50_ci`` and
  ``p99_ci``): significant when the two intervals do not overlap;
- else **repeats** (two or more runs a side): significant when the min-max ranges do
  not overlap;
- else none: the threshold alone decides, and the row says so.

``worse``: significant and worse than the threshold (relative change); ``better``:
significant and better than the threshold; ``unchanged`` otherwise; plus ``only in
baseline`` / ``only in candidate``. Exit status 1 when any matched row is worse, 0
otherwise, 2 for a usage error (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from harness import identity, results
from harness.columns import format_value

EXIT_OK, EXIT_WORSE, EXIT_USAGE = 0, 1, 2
SAMPLES = "metrics.latency_ms.samples"
#: Raw samples per side beyond this are subsampled (seeded) before bootstrapping.
MAX_SAMPLES = 5000
RESAMPLES = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Metric:
    """What ``--metric`` compares: a record column, its direction, and how samples estimate it."""

    column: str
    higher_is_better: bool
    percentile: float | None  # of latency samples; None: throughput, from the mean latency
    noise_ci: str | None  # the record's own bootstrap interval of this metric

    @property
    def unit(self) -> str:
        return "samples/s" if self.higher_is_better else "ms"


METRICS = {
    "throughput": Metric("metrics.throughput.samples_per_s", True, None, None),
    "p50": Metric("metrics.latency_ms.p50", False, 50.0, "metrics.noise.p50_ci"),
    "p99": Metric("metrics.latency_ms.p99", False, 99.0, "metrics.noise.p99_ci"),
}


@dataclass
class Row:
    """One configuration's verdict (``verdict``: better, worse, unchanged, only in baseline/candidate)."""

    configuration: str
    machine: str
    verdict: str
    baseline: float | None = None
    candidate: float | None = None
    change: float | None = None  # candidate / baseline - 1
    ci_low: float | None = None  # of candidate / baseline
    ci_high: float | None = None
    significant: bool | None = None
    evidence: str = ""


class UsageError(Exception):
    """A command-line problem, reported as one line with exit status 2."""


def parse_threshold(text: str) -> float:
    """``5%``, ``5`` (percent) or ``0.05`` -> 0.05."""
    raw = text.strip()
    try:
        value = float(raw.rstrip("%"))
    except ValueError:
        raise UsageError(f"--threshold {text!r} is not a number (e.g. 5% or 0.05)") from None
    fraction = value / 100 if raw.endswith("%") or value >= 1 else value
    if not 0 <= fraction < 10:
        raise UsageError(f"--threshold {text!r} is out of range (use e.g. 5%)")
    return fraction


def load(path: str) -> pd.DataFrame:
    """The ``ok`` records under ``path``; a missing path or no records is a :class:`UsageError`."""
    try:
        loaded = results.collect(path)
    except FileNotFoundError as error:
        raise UsageError(str(error)) from None
    frame = loaded.frame
    if frame.empty:
        raise UsageError(f"no run records found in {path}")
    return frame[frame["status"] == "ok"].reset_index(drop=True)


def match_keys(baseline: pd.DataFrame, candidate: pd.DataFrame, any_machine: bool, ignore: Sequence[str] = ()) -> tuple[pd.Series, pd.Series]:
    """Per row: its identity restricted to the config keys both sides know (less the
    ``ignore`` keys and the keys below them), plus the machine."""
    leaves = [[identity.flat(json.loads(text)) for text in side["identity.config"]] for side in (baseline, candidate)]
    known = [set().union(*side) if side else set() for side in leaves]
    common = {key for key in known[0] & known[1] if not any(key == i or key.startswith(i + ".") for i in ignore)}
    out = []
    for side, side_leaves in zip((baseline, candidate), leaves):
        keys = [identity.canonical({k: v for k, v in leaf.items() if k in common}) for leaf in side_leaves]
        machine = [""] * len(side) if any_machine else list(side["machine"].astype(str))
        out.append(pd.Series([f"{m}\x00{k}" for m, k in zip(machine, keys)], index=side.index, dtype="object"))
    return out[0], out[1]


def tuned(candidate: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """``--tuned``: each tuning study's best feasible trial (:mod:`harness.tuning`) and the
    keys the studies searched, which the match then ignores."""
    from harness import records, tuning

    study = "config.tune.study"
    rows = candidate[candidate[study].notna()] if study in candidate.columns else candidate.iloc[0:0]
    studies = tuning.trials([records.read(path) for path in rows["path"]])
    best = [str(frame.loc[frame.attrs["best"], "run_id"]) for frame in studies.values() if frame.attrs["best"] is not None]
    if not best:
        raise UsageError(
            "--tuned: no tuning study with a feasible trial among the candidate records (fix: point CANDIDATE_DIR at the results_dir of a +tune= sweep)"
        )
    searched = list(dict.fromkeys(key for frame in studies.values() for key in frame.attrs["params"]))
    return candidate[candidate["run_id"].isin(best)].reset_index(drop=True), searched


def _batch_ratio(base: pd.DataFrame, cand: pd.DataFrame) -> float | None:
    """Candidate over baseline batch size (throughput from mean latencies scales by it);
    None when a side mixes batch sizes."""
    sizes = [pd.to_numeric(side.get("scenario.batch_size", pd.Series([1.0])), errors="coerce").fillna(1.0).unique() for side in (base, cand)]
    if any(len(size) != 1 for size in sizes):
        return None
    return float(sizes[1][0]) / float(sizes[0][0])


def _pooled(frame: pd.DataFrame) -> list[float]:
    values: list[float] = []
    for sample in results.raw(frame, SAMPLES):
        if isinstance(sample, list):
            values += [float(v) for v in sample if isinstance(v, (int, float)) and np.isfinite(v)]
    return values


def _single_stream(frame: pd.DataFrame) -> bool:
    load_column = frame.get("metrics.throughput.load")
    return load_column is None or not load_column.isin(["offline", "server"]).any()


def bootstrap_ratio(base: Sequence[float], cand: Sequence[float], metric: Metric, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of candidate/baseline for ``metric`` from raw latency samples."""
    from scipy import stats as sps

    rng = np.random.default_rng(seed)
    a, b = (np.asarray(x, dtype=float) for x in (base, cand))
    a, b = (x if x.size <= MAX_SAMPLES else rng.choice(x, MAX_SAMPLES, replace=False) for x in (a, b))
    if metric.percentile is None:  # throughput ratio = mean baseline latency / mean candidate latency

        def statistic(x: np.ndarray, y: np.ndarray, axis: int) -> np.ndarray:
            return np.mean(x, axis=axis) / np.mean(y, axis=axis)
    else:

        def statistic(x: np.ndarray, y: np.ndarray, axis: int) -> np.ndarray:
            q = float(metric.percentile or 50)
            return np.percentile(y, q, axis=axis) / np.percentile(x, q, axis=axis)

    if np.unique(a).size < 2 and np.unique(b).size < 2:
        ratio = float(statistic(a, b, 0))
        return ratio, ratio
    result = sps.bootstrap(
        (a, b), statistic, vectorized=True, paired=False, n_resamples=RESAMPLES, confidence_level=CONFIDENCE, method="percentile", batch=50, rng=rng
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def _evidence(base: pd.DataFrame, cand: pd.DataFrame, metric: Metric, b: float, c: float) -> tuple[float | None, float | None, str]:
    """(ratio CI low, high, how it was decided) for one matched row."""
    scale = 1.0 if metric.percentile is not None else _batch_ratio(base, cand)  # rows matched across batch sizes (--tuned)
    if scale is not None and (metric.percentile is not None or (_single_stream(base) and _single_stream(cand))):
        base_samples, cand_samples = _pooled(base), _pooled(cand)
        if len(base_samples) >= 2 and len(cand_samples) >= 2:
            low, high = bootstrap_ratio(base_samples, cand_samples, metric)
            return low * scale, high * scale, f"bootstrap of raw samples ({len(base_samples)} vs {len(cand_samples)})"
    if metric.noise_ci and all(f"{metric.noise_ci}.{end}" in side for side in (base, cand) for end in ("low", "high")):
        bl, bh = base[f"{metric.noise_ci}.low"].min(), base[f"{metric.noise_ci}.high"].max()
        cl, ch = cand[f"{metric.noise_ci}.low"].min(), cand[f"{metric.noise_ci}.high"].max()
        if all(np.isfinite([bl, bh, cl, ch])) and bl > 0 and bh > 0:
            return cl / bh, ch / bl, "record bootstrap intervals"
    if len(base) >= 2 and len(cand) >= 2:
        bl, bh = base[metric.column].min(), base[metric.column].max()
        cl, ch = cand[metric.column].min(), cand[metric.column].max()
        if bl > 0 and bh > 0:
            return cl / bh, ch / bl, f"min-max of repeats ({len(base)} vs {len(cand)})"
    return None, None, "no samples, intervals or repeats: threshold only"


def verdict(change: float, low: float | None, high: float | None, metric: Metric, threshold: float) -> tuple[str, bool | None]:
    """better / worse / unchanged from the relative change and the ratio's interval (None: no interval)."""
    significant = None if low is None or high is None else not (low <= 1.0 <= high)
    worse_by = -change if metric.higher_is_better else change
    if significant is False or abs(worse_by) <= threshold:
        return "unchanged", significant
    return ("worse" if worse_by > 0 else "better"), significant


def compare(
    baseline: pd.DataFrame, candidate: pd.DataFrame, metric: Metric, threshold: float, any_machine: bool = False, ignore: Sequence[str] = ()
) -> list[Row]:
    """Every configuration of either side with its verdict."""
    base_keys, cand_keys = match_keys(baseline, candidate, any_machine, ignore)
    labels = _labels(pd.concat([baseline, candidate], ignore_index=True))
    label_of = dict(zip(pd.concat([base_keys, cand_keys], ignore_index=True), labels))
    rows: list[Row] = []
    for key in dict.fromkeys([*base_keys, *cand_keys]):
        base, cand = baseline[base_keys == key], candidate[cand_keys == key]
        machine = str((base if len(base) else cand)["machine"].iloc[0])
        name = label_of[key]
        b = float(base[metric.column].median()) if len(base) else np.nan
        c = float(cand[metric.column].median()) if len(cand) else np.nan
        if not len(base) or not len(cand):
            rows.append(Row(name, machine, "only in candidate" if len(cand) else "only in baseline", None if np.isnan(b) else b, None if np.isnan(c) else c))
            continue
        if not (np.isfinite(b) and np.isfinite(c) and b > 0):
            rows.append(Row(name, machine, "unchanged", b, c, evidence=f"no {metric.column} on both sides"))
            continue
        low, high, evidence = _evidence(base, cand, metric, b, c)
        change = c / b - 1
        outcome, significant = verdict(change, low, high, metric, threshold)
        rows.append(Row(name, machine, outcome, b, c, change, low, high, significant, evidence))
    order = {"worse": 0, "better": 1, "unchanged": 2, "only in baseline": 3, "only in candidate": 4}
    return sorted(rows, key=lambda row: (order[row.verdict], row.configuration, row.machine))


def _labels(frame: pd.DataFrame) -> list[str]:
    """``bert_small · bert_fp32 · onnxruntime fp32 (cpu) · batch_size=4`` for each row."""
    from harness.report.tables import config_labels

    if frame.empty:
        return []
    configs = config_labels(frame, variant=True)
    return [f"{model} · {scenario} · {config}" for model, scenario, config in zip(frame["model.label"], frame["scenario.name"], configs)]


# --- output ------------------------------------------------------------------------------------


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:+.1%}"


def _interval(row: Row) -> str:
    if row.ci_low is None or row.ci_high is None:
        return ""
    return f"{row.ci_low - 1:+.1%} … {row.ci_high - 1:+.1%}"


def _number(value: float | None) -> str:
    return format_value(value, "number")


HEADERS = ("verdict", "configuration", "machine", "baseline", "candidate", "change", "95% CI of change", "evidence")


def _cells(row: Row) -> list[str]:
    return [row.verdict, row.configuration, row.machine, _number(row.baseline), _number(row.candidate), _pct(row.change), _interval(row), row.evidence]


def render_markdown(rows: list[Row], metric_name: str, threshold: float) -> str:
    from harness.report.markdown import cell

    lines = [
        f"### harness-compare: {metric_name}, threshold {threshold:.1%}",
        "",
        summary_line(rows),
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "---|" * len(HEADERS),
    ]
    lines += ["| " + " | ".join(cell(text) for text in _cells(row)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def render_table(rows: list[Row], metric_name: str, threshold: float) -> Any:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"harness-compare: {metric_name}, threshold {threshold:.1%}", title_justify="left")
    for header in HEADERS:
        table.add_column(header, justify="right" if header in ("baseline", "candidate", "change") else "left")
    colours = {"worse": "red", "better": "green"}
    for row in rows:
        cells = [escape(cell) for cell in _cells(row)]
        colour = colours.get(row.verdict)
        cells[0] = f"[{colour}]{cells[0]}[/]" if colour else cells[0]
        table.add_row(*cells)
    return table


def summary_line(rows: list[Row]) -> str:
    counts = pd.Series([row.verdict for row in rows], dtype="object").value_counts()
    parts = [f"{counts[v]} {v}" for v in ("worse", "better", "unchanged", "only in baseline", "only in candidate") if v in counts]
    matched = sum(row.verdict in ("worse", "better", "unchanged") for row in rows)
    text = f"{matched} matched configuration(s): " + (", ".join(parts) or "none")
    return text + (" (nothing matched: check that both sides ran the same configurations)" if not matched else "")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="harness-compare",
        description="Regression gate: compare candidate run records with baseline ones, configuration by "
        "configuration; exit 1 when any is significantly worse than the threshold.",
    )
    p.add_argument("baseline", metavar="BASELINE_DIR", help="records of the reference (files, folders or globs)")
    p.add_argument("candidate", metavar="CANDIDATE_DIR", help="records to judge")
    p.add_argument("--threshold", default="5%", help="smallest relative change that counts (default 5%%)")
    p.add_argument("--metric", choices=sorted(METRICS), default="throughput", help="what to compare (default throughput)")
    p.add_argument("--format", choices=("table", "markdown", "json"), default="table", help="output (default table)")
    p.add_argument("--any-machine", action="store_true", help="match configurations across machines too")
    p.add_argument(
        "--ignore",
        default="",
        metavar="KEYS",
        help="comma-separated config keys left out of the match (a section name covers its keys), e.g. backend.intra_op_threads,scenario.batch_size",
    )
    p.add_argument(
        "--tuned",
        action="store_true",
        help="CANDIDATE_DIR holds +tune= trials: compare each study's best trial with the baseline, ignoring the keys the study searched (docs/tuning.md)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        threshold = parse_threshold(args.threshold)
        baseline, candidate = load(args.baseline), load(args.candidate)
        ignore = [key.strip() for key in args.ignore.split(",") if key.strip()]
        if args.tuned:
            candidate, searched = tuned(candidate)
            ignore += searched
    except UsageError as error:
        print(f"harness-compare: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    metric = METRICS[args.metric]
    rows = compare(baseline, candidate, metric, threshold, args.any_machine, ignore)
    if args.format == "json":
        print(
            json.dumps(
                {
                    "metric": args.metric,
                    "column": metric.column,
                    "threshold": threshold,
                    "worse": any(row.verdict == "worse" for row in rows),
                    "rows": [asdict(row) for row in rows],
                },
                indent=2,
            )
        )
    elif args.format == "markdown":
        print(render_markdown(rows, args.metric, threshold), end="")
    else:
        from rich.console import Console

        console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
        console.print(render_table(rows, args.metric, threshold))
        console.print(summary_line(rows), markup=False)
    return EXIT_WORSE if any(row.verdict == "worse" for row in rows) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
