"""harness-report: the pure summary functions on hand-made tables, then the real CLI end to end."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness import results
from harness.report import build, html_page, summary, tables
from test_results import write  # the schema-valid record factory shared with the loader tests

T = summary.THROUGHPUT
EVIL = "<script>alert(1)</script>"


# --- pure functions ------------------------------------------------------------------------------


def test_repeats_aggregate_to_median_count_and_min_max() -> None:
    frame = pd.DataFrame(
        {
            "backend.name": ["ort", "ort", "ort", "ov"],
            "machine": ["m1", "m1", "m1", "m1"],
            T: [100.0, 130.0, 110.0, 50.0],
            summary.LATENCY_P50: [10.0, 8.0, 9.0, 20.0],
        }
    )
    out = summary.aggregate_repeats(frame, keys=["backend.name", "machine"]).set_index("backend.name")
    assert out.loc["ort", "runs"] == 3
    assert out.loc["ort", T] == 110.0
    assert (out.loc["ort", f"{T}.min"], out.loc["ort", f"{T}.max"]) == (100.0, 130.0)
    assert out.loc["ort", summary.LATENCY_P50] == 9.0
    assert out.loc["ov", "runs"] == 1 and out.loc["ov", T] == 50.0
    assert summary.ACCURACY not in out.columns  # metrics the frame lacks are skipped


def test_aggregation_keeps_configurations_with_missing_keys() -> None:
    frame = pd.DataFrame({"backend.name": ["ort", "ort"], "scenario.seq_len": [np.nan, np.nan], T: [1.0, 3.0]})
    out = summary.aggregate_repeats(frame, keys=["backend.name", "scenario.seq_len"])
    assert len(out) == 1 and out.loc[0, "runs"] == 2 and out.loc[0, T] == 2.0


def test_filters_accept_short_names_and_reject_garbage() -> None:
    assert summary.parse_filter("backend=onnxruntime, precision=fp32,batch_size=8") == {
        "backend.name": "onnxruntime",
        "scenario.precision": "fp32",
        "scenario.batch_size": "8",
    }
    assert summary.parse_filter("hardware.label=lab") == {"hardware.label": "lab"}
    for bad in ("backend", "=x", ",", ""):
        with pytest.raises(ValueError):
            summary.parse_filter(bad)
    frame = pd.DataFrame({"scenario.batch_size": [8.0, 1.0]})
    assert list(summary.matches(frame, {"scenario.batch_size": "8"})) == [True, False]
    assert not summary.matches(frame, {"no.such.column": "x"}).any()


def _configs() -> pd.DataFrame:
    rows = [
        # model, kind, batch, backend, precision, machine, samples/s
        ("bert", "inference", 1, "ort", "fp32", "m1", 100.0),
        ("bert", "inference", 1, "ort", "int8", "m1", 250.0),
        ("bert", "inference", 1, "trt", "fp16", "m1", 400.0),
        ("bert", "inference", 1, "ort", "fp32", "m2", 50.0),
        ("bert", "inference", 1, "trt", "fp16", "m3", 800.0),  # m3 has no baseline of its own
        ("bert", "inference", 8, "trt", "fp16", "m1", 900.0),  # other workload: no baseline at batch 8
        ("resnet", "inference", 1, "ort", "fp32", "m1", 20.0),
        ("resnet", "inference", 1, "ov", "int8", "m1", 60.0),
    ]
    frame = pd.DataFrame(
        rows,
        columns=["model.name", "scenario.kind", "scenario.batch_size", "backend.name", "scenario.precision", "machine", T],
    )
    frame["scenario.seq_len"] = np.nan
    frame["scenario.name"] = frame["model.name"] + "_" + frame["scenario.precision"]
    return frame


def test_speedup_uses_the_baseline_of_the_same_model_and_machine_else_another_machine() -> None:
    out = summary.speedup_vs_baseline(_configs(), {"backend.name": "ort", "scenario.precision": "fp32"})
    speedup = out["speedup"].tolist()
    assert speedup[:3] == [1.0, 2.5, 4.0]  # m1 against m1's 100
    assert speedup[3] == 1.0  # m2's own baseline
    assert speedup[4] == 8.0 and out.loc[4, "baseline.machine"] == "m1"  # m3 falls back to m1 (sorted first)
    assert np.isnan(speedup[5])  # batch 8 has no baseline
    assert speedup[6:] == [1.0, 3.0]  # resnet against resnet, never bert
    assert out["baseline"].tolist() == [True, False, False, True, False, False, True, False]


def test_speedup_is_nan_everywhere_when_nothing_matches_the_baseline() -> None:
    out = summary.speedup_vs_baseline(_configs(), {"backend.name": "tensorflow"})
    assert out["speedup"].isna().all() and not out["baseline"].any()


def test_pareto_front_maximises_throughput_and_accuracy() -> None:
    frame = pd.DataFrame(
        {
            "name": ["a", "b", "c", "d", "e", "f", "g"],
            T: [100.0, 200.0, 300.0, 150.0, 300.0, 50.0, 400.0],
            summary.ACCURACY: [0.95, 0.93, 0.90, 0.92, 0.85, 0.96, np.nan],
        }
    )
    # d is beaten by b (faster and more accurate); e by c (same speed, more accurate); g lacks accuracy.
    front = summary.pareto_front(frame)
    assert frame.loc[front, "name"].tolist() == ["a", "b", "c", "f"]


def test_pareto_front_keeps_ties_and_handles_empty_tables() -> None:
    tie = pd.DataFrame({T: [1.0, 1.0], summary.ACCURACY: [0.5, 0.5]})
    assert summary.pareto_front(tie).all()
    assert summary.pareto_front(tie.iloc[:0]).empty


def test_numbers_are_shown_with_three_significant_figures_and_spread() -> None:
    assert [tables.number(v) for v in (1234.5, 12.345, 0.012345, 0, np.nan)] == ["1,234", "12.3", "0.0123", "0", ""]
    row = pd.Series({"runs": 3, T: 110.0, f"{T}.min": 100.0, f"{T}.max": 130.0})
    assert tables.with_spread(row, T) == "110 (100–130)"
    assert tables.with_spread(pd.Series({"runs": 1, T: 110.0}), T) == "110"


def _one_and_two_processes(folder: Path) -> pd.DataFrame:
    """The same training configuration run on 1 and 2 processes (global samples/s), plus an inference run."""
    training = {"model": "tiny-bert", "scenario": "bert_train", "kind": "training", "backend": "pytorch", "label": "lab"}
    write(folder, **training, world_size=1, throughput=100.0, loss_curve=[[0, 2.0], [10, 1.0]])
    write(folder, **training, world_size=2, throughput=180.0, loss_curve=[[0, 2.0], [10, 1.1]])
    write(folder, backend="onnxruntime", label="lab")
    return results.load(folder)


def test_runs_with_different_world_sizes_are_separate_configurations(tmp_path: Path) -> None:
    configs = summary.aggregate_repeats(_one_and_two_processes(tmp_path)).sort_values(["backend.name", "world_size"])
    assert configs[["backend.name", "world_size", "runs"]].values.tolist() == [
        ["onnxruntime", 1, 1],
        ["pytorch", 1, 1],
        ["pytorch", 2, 1],
    ]
    assert configs[T].tolist() == [100.0, 100.0, 180.0]  # medians of their own runs, no min–max spread across sizes
    assert tables.config_labels(configs).tolist() == ["onnxruntime fp32 (cpu)", "pytorch fp32 (cpu)", "pytorch fp32 (cpu) ×2"]
    assert tables.config_labels(configs, device=False).tolist()[1:] == ["pytorch fp32", "pytorch fp32 ×2"]


@pytest.mark.parametrize("baseline", ["backend=pytorch,world_size=1", "backend=pytorch"])
def test_speedup_of_a_data_parallel_run_is_against_the_single_process_run(tmp_path: Path, baseline: str) -> None:
    configs = summary.aggregate_repeats(_one_and_two_processes(tmp_path))
    out = summary.speedup_vs_baseline(configs, summary.parse_filter(baseline)).set_index(["backend.name", "world_size"])
    assert out.loc[("pytorch", 2), "speedup"] == pytest.approx(1.8)  # the scaling
    assert out.loc[("pytorch", 1), "speedup"] == 1.0
    assert out["baseline"].tolist() == [False, True, False]  # the 2-process run is measured, not a baseline
    assert np.isnan(out.loc[("onnxruntime", 1), "speedup"])  # inference is another workload
    assert summary.parse_filter("world_size=2") == {"world_size": "2"}
    assert summary.matches(configs, {"world_size": "2"}).sum() == 1


def test_report_tables_show_processes_only_when_a_run_is_data_parallel(tmp_path: Path) -> None:
    report = build.build(_one_and_two_processes(tmp_path / "both"), baseline={"backend.name": "pytorch", "world_size": "1"})
    train = next(section.table for section in report.sections if section.scenario == "bert_train")
    assert train[["Processes", "Throughput (samples/s)", "Speedup"]].values.tolist() == [
        ["1", "100", "1.00× (baseline)"],
        ["2", "180", "1.80×"],
    ]
    assert report.overview["Processes"].tolist() == ["1", "1", "2"]
    write(tmp_path / "single", backend="onnxruntime")
    single = build.build(results.load(tmp_path / "single"))
    assert "Processes" not in single.overview.columns
    assert "Processes" not in single.sections[0].table.columns


def test_non_ok_runs_are_listed_as_problems_and_never_ranked(tmp_path: Path) -> None:
    write(tmp_path, backend="onnxruntime", throughput=100.0)
    write(tmp_path, backend="tensorrt", status="mismatch", reason="max abs diff 0.3 vs fp32", throughput=1e9)
    write(tmp_path, backend="openvino", status="unavailable", reason="openvino not installed")
    report = build.build(results.load(tmp_path), baseline={"backend.name": "onnxruntime"})
    shown = pd.concat([section.table for section in report.sections])
    assert shown["Backend"].tolist() == ["onnxruntime"]
    assert "tensorrt" not in report.overview.to_string()
    assert report.problems[["Status", "Backend"]].values.tolist() == [["mismatch", "tensorrt"], ["unavailable", "openvino"]]
    assert "max abs diff 0.3 vs fp32" in report.problems["Reason"].tolist()


def test_html_escapes_every_record_string(tmp_path: Path) -> None:
    write(tmp_path, label=EVIL, model=f"m{EVIL}", scenario=EVIL, accuracy=0.9, reference=0.9)
    write(tmp_path, label=EVIL, backend=EVIL, status="failed", reason=f"boom {EVIL} & <b>bold</b>")
    page = html_page.render(build.build(results.load(tmp_path), baseline=None, title=EVIL, inputs=[EVIL]))
    assert "<script" not in page.lower()
    assert "<b>" not in page
    assert html.escape(EVIL) in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page


# --- the real command ----------------------------------------------------------------------------


def harness_report(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user would, in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "harness.report.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def two_machines(root: Path) -> list[Path]:
    """Records from two labelled machines (one with a GPU), repeats, a training run and a mismatch."""
    rng = np.random.default_rng(0)
    folders = []
    for label, accelerator, factor in (("lab-cpu", None, 1.0), ("gpu-box $1", {"name": "NVIDIA H200"}, 3.0)):
        folder = root / label.split()[0] / "results"
        folders.append(folder)
        for backend, precision, scenario, gain, accuracy in (
            ("onnxruntime", "fp32", "bert_fp32", 1.0, 0.91),
            ("onnxruntime", "int8", "bert_int8", 2.0, 0.90),
            ("openvino", "int8", "bert_int8", 2.5, 0.88),
        ):
            for repeat in range(2):
                p50 = 10.0 / gain / factor
                write(
                    folder,
                    label=label,
                    accelerator=accelerator,
                    backend=backend,
                    precision=precision,
                    scenario=scenario,
                    throughput=100.0 * gain * factor * (1 + 0.03 * repeat),
                    p50=p50,
                    p99=p50 * 1.3,
                    samples=list(np.abs(rng.normal(p50, p50 / 10, 100))),
                    accuracy=accuracy,
                    reference=0.91,
                    mfu=0.35 if accelerator else None,
                )
        write(
            folder,
            label=label,
            accelerator=accelerator,
            backend="tensorrt",
            precision="int8",
            scenario="bert_int8",
            status="mismatch",
            reason="outputs differ",
            throughput=1e9,
        )
        write(
            folder,
            label=label,
            accelerator=accelerator,
            model="tiny-resnet",
            scenario="resnet_train",
            kind="training",
            backend="pytorch",
            loss_curve=[[step, 2.0 / (1 + step / 10)] for step in range(50)],
        )
    return folders


def test_cli_compares_two_machines_in_one_html(tmp_path: Path) -> None:
    m1, m2 = two_machines(tmp_path / "in")
    (m1 / "corrupt.json").write_text("{")
    done = harness_report(str(m1), str(m2), "--format", "md,html,csv,parquet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "reports"  # the default --out, relative to cwd
    for name in ("report.md", "report.html", "results.csv", "results.parquet"):
        assert (out / name).is_file(), name
        assert str(Path("reports") / name) in done.stdout
    assert "corrupt.json" in done.stdout  # the malformed file is named, the run goes on
    page = (out / "report.html").read_text()
    bert = page.split("tiny-bert · bert_int8</h2>")[1].split("</table>")[0]
    assert "lab-cpu" in bert and "gpu-box $1" in bert  # both machines in one comparison table
    assert "2.00× (baseline)" not in bert and "2.00×" in bert  # int8 vs fp32 onnxruntime on the same machine
    assert page.count("data:image/png;base64,") >= 6  # throughput, latency x2 sections, accuracy, training
    assert "Training loss" in page and "Accuracy vs throughput" in page
    assert not re.search(r"""(?:src|href)\s*=\s*["'](?!data:)""", page)  # nothing fetched from outside
    assert "<script" not in page.lower()
    flat = pd.read_csv(out / "results.csv")
    assert len(flat) == 16 and set(flat["machine"]) == {"lab-cpu", "gpu-box $1"}
    assert len(pd.read_parquet(out / "results.parquet")) == 16
    markdown = (out / "report.md").read_text()
    assert "| mismatch" in markdown and "](plots/" in markdown
    assert all((out / link).is_file() for link in re.findall(r"\]\((plots/[^)]+)\)", markdown))


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["does-not-exist"], 2, "path not found: does-not-exist"),
        (["empty"], 1, "no run records found"),
        (["empty", "--baseline", "onnxruntime"], 2, "--baseline: expected key=value"),
        (["empty", "--format", "pdf"], 2, "unknown format(s) pdf"),
    ],
)
def test_cli_user_errors_are_one_line_without_traceback(tmp_path: Path, args: list[str], code: int, message: str) -> None:
    (tmp_path / "empty").mkdir()
    done = harness_report(*args, cwd=tmp_path)
    assert done.returncode == code
    assert done.stderr.count("\n") == 1 and message in done.stderr
    assert "Traceback" not in done.stderr


CHROMIUM = shutil.which("chromium")
HEADLESS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
]


@pytest.mark.skipif(CHROMIUM is None, reason="needs headless Chromium: `chromium` not on PATH (apt-get install -y chromium)")
def test_html_renders_offline_in_headless_chromium(tmp_path: Path) -> None:
    from matplotlib.image import imread

    two_machines(tmp_path / "in")
    assert harness_report("in", "--out", "out", "--format", "html", cwd=tmp_path).returncode == 0
    page = (tmp_path / "out" / "report.html").resolve().as_uri()
    shot = tmp_path / "shot.png"
    common = [CHROMIUM, *HEADLESS, f"--user-data-dir={tmp_path / 'profile'}"]
    rendered = subprocess.run([*common, f"--screenshot={shot}", "--window-size=1280,2000", page], capture_output=True, text=True, timeout=120)
    assert rendered.returncode == 0, rendered.stderr[-2000:]
    assert "Uncaught" not in rendered.stderr
    pixels = imread(shot)[..., :3].reshape(-1, 3)
    colours = np.unique((pixels * 255).round().astype(np.uint8), axis=0)
    assert len(colours) > 200, "screenshot looks blank"  # text, tables and plots give thousands
    dom = subprocess.run([*common, "--dump-dom", page], capture_output=True, text=True, timeout=120)
    assert "tiny-bert · bert_int8" in dom.stdout and "gpu-box $1" in dom.stdout
    assert dom.stdout.count("<img") >= 6
