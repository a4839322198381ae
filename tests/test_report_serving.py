"""The serving part of a report, from hand-made serving records (no engine runs).

Two backends swept on one machine (synchronous, throughput, two fixed rates) and one
backend at a fixed rate on a second machine: the step table has every step with its
numbers, marks the saturation step, the goodput bars take each configuration's best
step, and every renderer (terminal, Markdown, HTML) carries the section and its
latency-vs-rate and goodput figures.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from harness import records, results
from harness.report import build, html_page, markdown, serving, terminal
from test_results import make_record

SLO = {"ttft_ms": 100.0, "tpot_ms": 20.0, "percentile": 99.0}


def step(name: str, kind: str, offered: float, achieved: float, ttft: float, itl: float, goodput: float | None, verdict: str | None) -> dict:
    return {
        "name": name,
        "kind": kind,
        "rate": offered if kind != "concurrency" else None,
        "offered_rate": offered,
        "request_throughput": achieved,
        "output_tokens_per_s": achieved * 32,
        "goodput": goodput,
        "verdict": verdict,
        "ttft_ms": {"p50": ttft / 2, "p99": ttft},
        "itl_ms": {"p50": itl / 2, "p99": itl},
        "tpot_ms": {"p50": itl / 2, "p99": itl * 0.9},
    }


def serving_record(backend: str, steps: list[dict], cpu: str | None = None, saturation: float | None = None) -> dict:
    kwargs = {"cpu": cpu} if cpu else {}
    rec = make_record(scenario="llm_serve", kind="serving", backend=backend, model="llama_tiny", throughput=None, **kwargs)
    rec["metrics"]["serving"] = {"load": "sweep", "slo": SLO, "steps": steps, "saturation_rate": saturation}
    rec["metrics"]["backend"] = {"concurrency": "continuous batching, <= 8"}
    return rec


SWEEP_OV = [
    step("synchronous", "concurrency", 2.0, 2.0, 30.0, 8.0, 2.0, "VALID"),
    step("throughput", "concurrency", 9.0, 9.0, 400.0, 30.0, 1.5, "INVALID"),
    step("poisson@4.333", "poisson", 4.333, 4.3, 60.0, 12.0, 4.2, "VALID"),
    step("poisson@6.667", "poisson", 6.667, 6.2, 150.0, 25.0, 3.0, "INVALID"),
]
SWEEP_PT = [step("synchronous", "concurrency", 1.0, 1.0, 50.0, 15.0, 1.0, "VALID"), step("throughput", "concurrency", 3.0, 3.0, 900.0, 40.0, 0.2, "INVALID")]


@pytest.fixture()
def report(tmp_path: Path) -> build.Report:
    records.write(serving_record("openvino", SWEEP_OV, saturation=9.0), tmp_path)
    records.write(serving_record("pytorch", SWEEP_PT, saturation=3.0), tmp_path)
    records.write(
        serving_record("openvino", [step("poisson@2", "poisson", 2.0, 1.9, 40.0, 9.0, 1.9, "VALID")], cpu="AMD EPYC 9654 96-Core Processor"), tmp_path
    )
    records.write(make_record(scenario="bert_fp32"), tmp_path)  # not serving: no serving section from it
    return build.build(results.load(tmp_path))


def test_every_step_of_every_run_is_a_row_with_its_numbers(report: build.Report) -> None:
    (section,) = report.serving
    assert section.model == "llama_tiny" and section.scenario == "llm_serve"
    table = section.table
    assert len(table) == 4 + 2 + 1
    row = table[(table["Load"] == "poisson@4.333")].iloc[0]
    assert (row["Offered req/s"], row["Req/s"], row["TTFT p99 ms"], row["ITL p99 ms"], row["Goodput req/s"], row["SLO"]) == (
        "4.333",
        "4.300",
        "60.0",
        "12.0",
        "4.200",
        "VALID",
    )
    assert table["Load"].str.endswith("(saturation)").sum() == 2  # the two sweeps' closed-loop steps
    assert table["Machine"].nunique() == 2


def test_goodput_bars_take_each_configurations_best_step(tmp_path: Path) -> None:
    records.write(serving_record("openvino", SWEEP_OV, saturation=9.0), tmp_path)
    records.write(serving_record("pytorch", SWEEP_PT, saturation=3.0), tmp_path)
    frame = serving.step_frame(results.load(tmp_path))
    best = serving.goodput_rows(frame)
    assert best[["goodput", "offered_rate"]].values.tolist() == [[4.2, 4.333], [1.0, 1.0]]
    assert frame["saturation"].tolist().count(True) == 2


def test_no_slo_means_no_goodput_bars_but_the_curves_stay(tmp_path: Path) -> None:
    steps = [step("synchronous", "concurrency", 2.0, 2.0, 30.0, 8.0, None, None), step("throughput", "concurrency", 5.0, 5.0, 90.0, 12.0, None, None)]
    rec = serving_record("openvino", steps, saturation=5.0)
    rec["metrics"]["serving"]["slo"] = {"ttft_ms": None, "tpot_ms": None, "percentile": 99.0}
    records.write(rec, tmp_path)
    (section,) = build.build(results.load(tmp_path)).serving
    assert [figure.name.split("_")[0] for figure in section.figures] == ["serving-latency"]
    assert section.table["SLO"].tolist() == ["", ""] and section.table["Goodput req/s"].tolist() == ["", ""]


def test_every_renderer_shows_the_section_and_its_figures(report: build.Report, tmp_path: Path) -> None:
    (section,) = report.serving
    assert [figure.name.split("_")[0] for figure in section.figures] == ["serving-latency", "goodput"]
    assert all(figure.png.startswith(b"\x89PNG") for figure in section.figures)
    text = markdown.render(report)
    assert "## Serving under load" in text and all(f"plots/{figure.name}.png" in text for figure in section.figures)
    written = markdown.write(report, tmp_path / "md")
    assert {f"{figure.name}.png" for figure in section.figures} <= {path.name for path in written}
    page = html_page.render(report)
    assert "Serving under load" in page and page.count("data:image/png;base64,") >= 2
    out = io.StringIO()
    terminal.show(report, Console(file=out, width=200))
    assert "Serving under load" in out.getvalue() and "poisson@4.333" in out.getvalue()


def test_a_report_without_serving_runs_has_no_serving_section(tmp_path: Path) -> None:
    records.write(make_record(scenario="bert_fp32"), tmp_path)
    assert build.build(results.load(tmp_path)).serving == []
