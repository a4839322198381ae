"""A report row is one distinct configuration, whatever records arrive (property-based).

Random record sets vary identifying keys (batch size, a backend option, the model's
checkpoint content, the dataset, the machine) and run-local keys (results folder,
launcher, overwrite, node rank), carry NaN/Infinity/missing metrics and failed runs.
The report must never crash, and two records share a row iff their identifying keys
are equal, where a checkpoint is known by its content, never by its folder's path.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import records, results
from harness.report import build, summary, tables
from test_results import make_record

#: The identifying choices a generated record makes, beside the run-local noise.
IDENTIFYING = st.fixed_dictionaries(
    {
        "batch_size": st.sampled_from([1, 4]),
        "level": st.sampled_from(["all", "disable"]),
        "checkpoint": st.sampled_from([None, ("/home/a/ckpt", "d1"), ("/data/b/ckpt", "d1"), ("/home/a/ckpt", "d2")]),
        "dataset": st.sampled_from(["sentiment", "digits"]),
        "machine": st.sampled_from(["lab-1", "lab-2"]),
    }
)
RUN_LOCAL = st.fixed_dictionaries(
    {
        "results_dir": st.text(min_size=1, max_size=8),
        "timeout_s": st.integers(1, 10_000),
        "overwrite": st.booleans(),
        "node_rank": st.integers(0, 3),
    }
)
NUMBER = st.one_of(
    st.floats(min_value=0.001, max_value=1e6),
    st.just(float("nan")),
    st.just(float("inf")),
    st.none(),
)
METRICS = st.fixed_dictionaries(
    {
        "throughput": NUMBER,
        "mfu": NUMBER,
        "accuracy": NUMBER,
        "status": st.sampled_from(["ok", "ok", "ok", "failed"]),
    }
)


def record_of(ident: dict[str, Any], local: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """A schema-valid record (NaN/Infinity are valid JSON-schema numbers when read back)."""
    rec = make_record(label=ident["machine"], batch_size=ident["batch_size"], status=metrics["status"], reason="" if metrics["status"] == "ok" else "boom")
    path, digest = ident["checkpoint"] or (None, None)
    rec["config"] = {
        "results_dir": local["results_dir"],
        "overwrite": local["overwrite"],
        "launcher": {"timeout_s": local["timeout_s"]},
        "hardware": {"label": ident["machine"]},
        "backend": {"name": "onnxruntime", "graph_optimization_level": ident["level"], "providers": ["CPU"]},
        "model": {"name": "tiny-bert", "path": path},
        "dataset": {"name": ident["dataset"]},
        "scenario": {"name": "bert_fp32", "batch_size": ident["batch_size"], "distributed": {"nproc_per_node": 1, "node_rank": local["node_rank"]}},
    }
    if path:
        rec["inputs"] = {"model.path": {"name": "ckpt", "sha256": digest * 32}}
    if metrics["status"] == "ok":
        rec["metrics"]["throughput"]["samples_per_s"] = metrics["throughput"] if metrics["throughput"] is not None else 1.0
        if metrics["mfu"] is not None:
            rec["metrics"]["mfu"] = metrics["mfu"]
        if metrics["accuracy"] is not None:
            rec["metrics"]["accuracy"] = {"metric": "top1", "value": metrics["accuracy"]}
    return rec


def expected_key(ident: dict[str, Any]) -> tuple[Any, ...]:
    """What the spec says identifies a row: the checkpoint by content, not by folder."""
    checkpoint = ident["checkpoint"][1] if ident["checkpoint"] else None
    return (ident["batch_size"], ident["level"], checkpoint, ident["dataset"], ident["machine"])


RECORD_SETS = st.lists(st.tuples(IDENTIFYING, RUN_LOCAL, METRICS), min_size=1, max_size=25)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(RECORD_SETS)
def test_records_share_a_row_iff_their_identifying_keys_are_equal(draws: list[tuple[dict, dict, dict]]) -> None:
    recs = [record_of(*draw) for draw in draws]
    frame = results.flatten(recs)
    ok = frame["status"] == "ok"
    expected = pd.Series([expected_key(ident) for ident, _, _ in draws], index=frame.index)
    got = frame["identity"] + " @ " + frame["machine"]
    # the same partition of the ok records: equal expected keys <=> equal (identity, machine)
    pairs = set(zip(expected[ok], got[ok]))
    assert len(pairs) == expected[ok].nunique() == got[ok].nunique()

    report = build.build(frame, baseline={"backend.name": "onnxruntime"}, figures=False)
    rows = sum(len(section.table) for section in report.sections)
    assert rows == expected[ok].nunique()
    runs = sum(int(n) for section in report.sections for n in section.table["Runs"])
    assert runs == int(ok.sum())
    for section in report.sections:  # no row shows an MFU above 100%
        if "MFU" in section.table:
            shown = section.table["MFU"].str.rstrip("%").replace("", np.nan).astype(float)
            assert not (shown > 100).any()


def test_varying_keys_become_columns_named_by_their_last_part() -> None:
    recs = [
        record_of(
            {"batch_size": b, "level": level, "checkpoint": None, "dataset": "sentiment", "machine": "lab"},
            {"results_dir": f"r{b}{level}", "timeout_s": 5, "overwrite": False, "node_rank": 0},
            {"throughput": 10.0 * b, "mfu": None, "accuracy": None, "status": "ok"},
        )
        for b in (1, 4)
        for level in ("all", "disable")
    ]
    report = build.build(results.flatten(recs), figures=False)
    (section,) = report.sections
    table = section.table
    assert list(table.columns[:7]) == ["Backend", "Precision", "Device", "Machine", "batch_size", "graph_optimization_level", "Runs"]
    assert sorted(zip(table["batch_size"], table["graph_optimization_level"])) == [("1", "all"), ("1", "disable"), ("4", "all"), ("4", "disable")]
    assert "results_dir" not in " ".join(table.columns)  # run-local keys never become columns


def test_a_key_only_some_rows_set_still_separates_rows_that_would_look_alike() -> None:
    base = record_of(
        {"batch_size": 1, "level": "all", "checkpoint": None, "dataset": "sentiment", "machine": "lab"},
        {"results_dir": "r", "timeout_s": 5, "overwrite": False, "node_rank": 0},
        {"throughput": 10.0, "mfu": None, "accuracy": None, "status": "ok"},
    )
    newer = copy.deepcopy(base)
    newer["run_id"] = records.new_run_id()
    newer["config"]["backend"]["new_option"] = True  # e.g. a record from a newer harness
    rows = summary.aggregate_repeats(results.flatten([base, newer]))
    assert len(rows) == 2
    assert sorted(tables.variant_columns(rows)["new_option"]) == ["(unset)", "true"]


def test_report_of_one_record_and_of_two_thousand(tmp_path: Path) -> None:
    one = tmp_path / "one"
    records.write(make_record(), one)
    assert len(build.build(results.load(one)).sections) == 1
    many = tmp_path / "many"
    many.mkdir()
    rng = np.random.default_rng(0)
    template = make_record(samples=list(rng.uniform(5, 15, 20)))
    for i in range(2000):  # copies of one validated record, varied where the report looks
        rec = copy.deepcopy(template)
        rec["run_id"] = records.new_run_id()
        rec["backend"]["name"] = ["onnxruntime", "openvino"][i % 2]
        rec["scenario"]["batch_size"] = [1, 8][i % 3 % 2]
        rec["metrics"]["throughput"]["samples_per_s"] = float(rng.uniform(50, 150))
        rec["metrics"]["mfu"] = [0.3, 1.7, None][i % 3]
        (many / f"{i:05d}.json").write_text(json.dumps(rec))
    report = build.build(results.load(many), baseline={"backend.name": "onnxruntime"})
    assert sum(len(section.table) for section in report.sections) == 4
    assert sum(int(n) for section in report.sections for n in section.table["Runs"]) == 2000
    assert any("MFU above 100%" in note for note in report.notes)


def test_non_finite_and_missing_metrics_never_break_figures(tmp_path: Path) -> None:
    for throughput, samples in ((float("inf"), [1.0, float("nan"), 2.0]), (float("nan"), [float("inf")]), (5.0, [])):
        rec = make_record(throughput=1.0, samples=[1.0, 2.0])
        rec["metrics"]["throughput"]["samples_per_s"] = throughput
        rec["metrics"]["latency_ms"]["samples"] = samples
        rec["metrics"]["training"] = {"loss_curve": [[0, 1.0], [1, float("nan")]]}
        (tmp_path / f"{rec['run_id']}.json").write_text(json.dumps(rec))  # Python writes NaN/Infinity tokens
    report = build.build(results.load(tmp_path))
    assert report.sections and report.sections[0].figures
