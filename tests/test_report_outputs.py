"""Report outputs a user can share: kind columns, safe CSV/Markdown, plain log ticks, bad --out."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from harness import records, results
from harness.columns import Column
from harness.report import build, export, markdown, plots
from test_results import make_record

SERVER = [
    Column("metrics.server.result", "Server", "text").as_dict(),
    Column("metrics.server.latency_at_percentile_ms", "Server p99 (ms)", "number", "lower").as_dict(),
]
PRUNING = [
    Column("metrics.pruning.params_after", "Params", "integer", when="metrics.pruning.method").as_dict(),
    Column(
        "metrics.throughput.samples_per_s", "Speedup vs unpruned fp32", "ratio", "higher", vs={"scenario.precision": "fp32"}, when="metrics.pruning.method"
    ).as_dict(),
]


def _with(rec: dict, columns: list[dict], **metrics: object) -> dict:
    rec["columns"] = columns
    rec["metrics"].update(metrics)
    return rec


def test_a_kind_declares_its_columns_and_the_report_shows_them_without_the_plugin(tmp_path: Path) -> None:
    records.write(_with(make_record(scenario="bert_server"), SERVER, server={"result": "VALID", "latency_at_percentile_ms": 12.5}), tmp_path)
    records.write(
        _with(make_record(scenario="bert_server", backend="openvino"), SERVER, server={"result": "INVALID", "latency_at_percentile_ms": 250.0}), tmp_path
    )
    records.write(make_record(scenario="bert_plain"), tmp_path)  # a kind that declares nothing
    report = build.build(results.load(tmp_path), figures=False)
    server = next(s.table for s in report.sections if s.scenario == "bert_server")
    assert server[["Backend", "Server", "Server p99 (ms)"]].values.tolist() == [["onnxruntime", "VALID", "12.5"], ["openvino", "INVALID", "250"]]
    plain = next(s.table for s in report.sections if s.scenario == "bert_plain")
    assert "Server" not in plain.columns  # declared columns show only where some row fills them


def test_pruned_rows_show_their_speedup_against_the_unpruned_fp32_row(tmp_path: Path) -> None:
    records.write(make_record(scenario="bert_fp32", throughput=100.0), tmp_path)
    records.write(make_record(scenario="bert_fp32", backend="openvino", throughput=400.0), tmp_path)
    pruned = _with(make_record(scenario="bert_fp32", throughput=180.0), PRUNING, pruning={"method": "structured", "params_after": 5000})
    pruned["config"]["scenario"]["pruning"] = {"method": "structured"}
    records.write(pruned, tmp_path)
    (section,) = build.build(results.load(tmp_path), figures=False).sections
    table = section.table.set_index(["Backend", "pruning.method"])
    assert table.loc[("onnxruntime", "structured"), "Speedup vs unpruned fp32"] == "1.80×"  # vs the same backend's row
    assert table.loc[("onnxruntime", "structured"), "Params"] == "5,000"
    assert table.loc[("onnxruntime", "(unset)"), "Speedup vs unpruned fp32"] == ""


def test_csv_cells_that_a_spreadsheet_would_run_are_made_text(tmp_path: Path) -> None:
    evil = '=HYPERLINK("http://evil.example","click")'
    for label in (evil, "+cmd", "-2+3", "@SUM(A1)", "\uff1d1+1"):
        records.write(make_record(label=label, reason="fine"), tmp_path)
    path = export.write_csv(results.load(tmp_path), tmp_path / "out.csv")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    labels = {row["hardware.label"] for row in rows}
    assert labels == {"'" + evil, "'+cmd", "'-2+3", "'@SUM(A1)", "'\uff1d1+1"}
    assert all(not cell.startswith(export.FORMULA_STARTS) for row in rows for cell in row.values())
    assert float(rows[0]["metrics.latency_ms.p50"]) == 10.0  # numbers stay numbers
    assert export.inert(-1.5) == -1.5


def test_markdown_never_turns_record_text_into_links_code_or_html(tmp_path: Path) -> None:
    records.write(make_record(model="m](http://evil.example) [x", label="`rm -rf` <img src=x> a|b *bold*"), tmp_path)
    text = markdown.render(build.build(results.load(tmp_path), figures=False, inputs=["res`ults"]))
    assert not re.search(r"(?<!\\)\]\(http", text) and "\\](http://evil.example)" in text
    assert "<img" not in text and "\\`rm -rf\\`" in text and "a\\|b" in text
    assert "res\\`ults" in text


def test_log_axes_get_plain_tick_labels_not_mathtext() -> None:
    figure = Figure()
    axes = figure.add_subplot()
    axes.plot([1, 10, 100, 1000], [1, 2, 3, 4])
    plots.log_axis(axes.xaxis)
    with plots._style():
        plots._png(figure)
    labels = [tick.get_text() for tick in axes.get_xticklabels() if tick.get_text()]
    assert labels and not any("$" in label or "mathdefault" in label for label in labels)
    assert {"10", "100"} <= set(labels)


def harness_report(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.report.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("kind", ["file", "read-only folder", "inside a file"])
def test_an_unwritable_out_is_one_line_and_exit_2(tmp_path: Path, kind: str) -> None:
    records.write(make_record(), tmp_path / "results")
    target = tmp_path / "out"
    if kind == "file":
        target.write_text("not a folder")
    elif kind == "read-only folder":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders; the file and path cases cover the error path")
        target.mkdir()
        target.chmod(0o500)
    else:
        (tmp_path / "plain").write_text("x")
        target = tmp_path / "plain" / "out"
    done = harness_report("results", "--out", str(target), cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "--out" in done.stderr or "cannot write the report" in done.stderr


def test_a_read_only_filesystem_is_found_before_the_report_is_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from harness.report import cli

    records.write(make_record(), tmp_path / "results")

    def read_only(*args: object, **kwargs: object) -> object:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(cli.tempfile, "NamedTemporaryFile", read_only)
    monkeypatch.setattr(cli.build, "build", lambda *a, **k: pytest.fail("built a report it cannot write"))
    assert cli.main([str(tmp_path / "results"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Read-only file system" in err and "fix:" in err


def test_a_full_disk_while_writing_is_one_line_and_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.report import cli

    records.write(make_record(), tmp_path / "results")

    def full(*args: object, **kwargs: object) -> list[Path]:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli.html_page, "write", full)
    assert cli.main([str(tmp_path / "results"), "--out", str(tmp_path / "out")]) == 2


def test_records_replace_nan_and_infinity_with_null_and_say_so(tmp_path: Path) -> None:
    rec = make_record(mfu=0.5)
    rec["metrics"]["mfu"] = float("nan")
    rec["metrics"]["accuracy"] = {"metric": "top1", "value": float("inf"), "reference": None}
    rec["metrics"]["latency_ms"]["samples"][0] = float("-inf")
    path = records.write(rec, tmp_path)
    text = path.read_text()
    assert "NaN" not in text.replace('"NaN"', "") and "Infinity" not in text.replace('"Infinity"', "").replace('"-Infinity"', "")
    written = records.read(path)
    assert written["status"] == "ok" and written["metrics"]["mfu"] is None
    assert written["non_finite"] == {"metrics.mfu": "NaN", "metrics.accuracy.value": "Infinity", "metrics.latency_ms.samples[0]": "-Infinity"}
    assert rec == written  # the caller sees what was written


def test_a_record_whose_required_figure_is_nan_is_failed_with_its_metrics_kept(tmp_path: Path) -> None:
    rec = make_record()
    rec["metrics"]["latency_ms"]["p50"] = float("nan")
    written = records.read(records.write(rec, tmp_path))
    assert written["status"] == "failed" and "metrics.latency_ms.p50" in written["reason"]
    assert written["metrics"] == {} and written["rejected_metrics"]["latency_ms"]["p50"] is None
    records.validate(written)
