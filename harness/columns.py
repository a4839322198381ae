"""Report columns a scenario kind declares: which record key, under which header, how shown.

A kind knows which of its figures matter (a server run's VALID/INVALID, a training
run's time to target); the report and the terminal table know none of the kinds. The
link is this tiny declaration: each :class:`~harness.scenario.Scenario` subclass lists
``report_columns``, the runner copies them into every record it writes (``columns``),
and renderers show any column whose key some row fills. A report therefore works
where the plugin that wrote a record is not installed, and a new kind (generation,
serving) adds its columns without touching the report.

A column points at any dotted record key (``metrics.server.result``,
``metrics.training.time_to_target_s``, ``model.params``). Two optional fields cover
figures that need a second row: ``vs`` shows the value divided by the value of a
*reference row* (same machine, backend, model and workload, matching ``vs``, and
lacking the ``when`` key), e.g. a pruned model's throughput over its unpruned fp32
row's; ``when`` limits a column to rows where that key is present.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

#: How a value is shown. ``ratio``: ``1.84×``; ``percent``: a fraction as ``42.0%``;
#: ``mib``: bytes as MiB; ``fixed4``: four decimals (accuracies line up); ``number``:
#: three significant figures; ``integer``: thousands separators; ``text``: as is.
FORMATS: tuple[str, ...] = ("number", "integer", "fixed4", "percent", "ratio", "mib", "seconds", "text")
BETTER: tuple[str | None, ...] = ("higher", "lower", None)


@dataclass(frozen=True)
class Column:
    """One report/terminal column: ``key`` (dotted record key), ``label`` (header),
    ``format`` (see :data:`FORMATS`), ``better`` (``higher``/``lower``/None), and the
    optional ``vs`` (reference-row filter) and ``when`` (key that must be present)."""

    key: str
    label: str
    format: str = "number"
    better: str | None = None
    vs: Mapping[str, str] = field(default_factory=dict)
    when: str | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"column {self.label!r}: format {self.format!r} is not one of {', '.join(FORMATS)}")
        if self.better not in BETTER:
            raise ValueError(f"column {self.label!r}: better must be 'higher', 'lower' or None, got {self.better!r}")
        if not self.key or not self.label:
            raise ValueError("a column needs a record key and a label")

    @property
    def derived(self) -> bool:
        """True when the shown value needs another row (``vs``): only reports compute it."""
        return bool(self.vs)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form copied into records."""
        out: dict[str, Any] = {"key": self.key, "label": self.label, "format": self.format, "better": self.better}
        if self.vs:
            out["vs"] = dict(self.vs)
        if self.when:
            out["when"] = self.when
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Column | None":
        """A column from a record's ``columns`` entry; None for an entry this version cannot use."""
        try:
            return cls(
                key=str(data["key"]),
                label=str(data["label"]),
                format=str(data.get("format") or "number"),
                better=data.get("better"),
                vs={str(k): str(v) for k, v in (data.get("vs") or {}).items()},
                when=data.get("when"),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            return None


#: The figures every kind shares (a kind declares only its own on top), in display order:
#: the one list the terminal table, the report's tables and summaries, and the results
#: frame's numeric columns are built from.
THROUGHPUT = "metrics.throughput.samples_per_s"
LATENCY_P50 = "metrics.latency_ms.p50"
LATENCY_P99 = "metrics.latency_ms.p99"
PEAK_RSS = "metrics.memory_mib.peak_rss_mib"
DEVICE_PEAK = "metrics.memory_mib.peak_allocated_mib"
ACCURACY = "metrics.accuracy.value"
ACCURACY_REFERENCE = "metrics.accuracy.reference"
RELATIVE_ACCURACY = "metrics.accuracy.relative"
MODEL_SIZE = "model.size_bytes"
MFU = "metrics.mfu"
COMMON_COLUMNS: tuple[Column, ...] = (
    Column(THROUGHPUT, "Throughput (samples/s)", "number", "higher"),
    Column(LATENCY_P50, "p50 (ms)", "number", "lower"),
    Column(LATENCY_P99, "p99 (ms)", "number", "lower"),
    Column(PEAK_RSS, "Peak RSS (MiB)", "number", "lower"),
    Column(DEVICE_PEAK, "Device peak (MiB)", "number", "lower"),
    Column(ACCURACY, "Accuracy", "fixed4", "higher"),
    Column(RELATIVE_ACCURACY, "Rel. accuracy", "fixed4", "higher"),
    Column(MODEL_SIZE, "Size (MiB)", "mib", "lower"),
    Column(MFU, "MFU", "percent", "higher"),
)
#: Where a run's wall time went (:mod:`harness.stages`): every record declares these beside
#: its kind's columns, so a report shows them for any row that has them (records before
#: schema 1.1 leave them blank).
WALL = "metrics.wall_s"
OUTSIDE_WINDOW = "metrics.outside_window_s"
STAGE_COLUMNS: tuple[Column, ...] = (
    Column(WALL, "Wall (s)", "seconds", "lower"),
    Column(OUTSIDE_WINDOW, "Outside window (s)", "seconds", "lower"),
)
#: Every common figure a results frame coerces to a number (the reference accuracy is
#: read beside the accuracy but has no column of its own).
COMMON_METRICS: tuple[str, ...] = (*(column.key for column in COMMON_COLUMNS), ACCURACY_REFERENCE)


def from_record(record: Mapping[str, Any]) -> list[Column]:
    """The usable columns a record declares (unknown formats and malformed entries skipped)."""
    declared = record.get("columns")
    if not isinstance(declared, list):
        return []
    return [column for column in (Column.from_dict(item) for item in declared if isinstance(item, Mapping)) if column]


def missing(value: Any) -> bool:
    """None, NaN, infinities and pandas' NA/NaT count as no value."""
    if value is None:
        return True
    if isinstance(value, (str, bytes, bool, list, dict)):
        return False
    try:
        return not math.isfinite(float(value))
    except (TypeError, ValueError):
        return type(value).__name__ in ("NAType", "NaTType")


def significant(value: float, digits: int = 3) -> str:
    """Round to ``digits`` significant figures with thousands separators."""
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    decimals = max(digits - 1 - magnitude, 0)
    return f"{value:,.{decimals}f}"


def format_value(value: Any, fmt: str) -> str:
    """``value`` as the column ``fmt`` shows it; blank when missing."""
    if missing(value):
        return ""
    if fmt == "text" or isinstance(value, str):
        return str(value)
    if isinstance(value, bool):
        return "yes" if value else "no"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if fmt == "integer":
        return f"{round(number):,}"
    if fmt == "fixed4":
        return f"{number:.4f}"
    if fmt == "percent":
        return f"{number:.1%}"
    if fmt == "ratio":
        return f"{number:.2f}×"
    if fmt == "mib":
        return significant(number / 2**20)
    if fmt == "seconds":
        return significant(number) + " s"
    return significant(number)
