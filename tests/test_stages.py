"""Stage timings (``metrics.stages``): the clock's accounting and the contract every record keeps.

Contract, never speed: the stages are present, non-negative, exclusive, and together no
longer than the wall time the command took as the test measured it from outside.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from conftest import FAST, records_in, run_cli

from harness import records, stages

#: Stages every isolated inference run passes through, in the parent and in the run process.
PROCESS_STAGES = {
    "cli_start",
    "plugins",
    "precheck",
    "compose",
    "config_check",
    "spawn",
    "imports",
    "probe",
    "model_build",
    "data",
    "export",
    "prepare",
    "validate",
    "warmup",
    "measure",
    "exit",
}
HEAVY = ("torch", "transformers", "onnxruntime", "openvino")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake_clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(stages, "clock", fake)
    yield fake
    stages.stop()


def test_time_goes_to_the_innermost_open_stage_only(fake_clock):
    clock = stages.start("outer")
    fake_clock.now += 1
    with stages.timed("a"):
        fake_clock.now += 2
        with stages.timed("b"):
            fake_clock.now += 3
        fake_clock.now += 4
    fake_clock.now += 5
    clock.switch("next")
    fake_clock.now += 6
    assert clock.snapshot() == {"outer": 6.0, "a": 6.0, "b": 3.0, "next": 6.0}
    assert sum(clock.snapshot().values()) == 21.0  # exclusive: the sum is the elapsed time


def test_a_clock_can_start_before_this_process_and_absorb_another(fake_clock):
    parent = stages.start("cli", at=90.0)  # e.g. the process's start time
    fake_clock.now = 100.0
    parent.switch("run_process")  # the child's clock starts here
    child = stages.StageClock("spawn", start=100.0)
    fake_clock.now = 102.0
    child.switch("measure")
    fake_clock.now = 105.0
    parent.absorb(child.snapshot(), child.until, then="exit")
    fake_clock.now = 106.0
    assert parent.snapshot() == {"cli": 10.0, "spawn": 2.0, "measure": 3.0, "exit": 1.0}
    assert "run_process" not in parent.snapshot()  # the child's report replaced it
    parent.restart("sweep")
    fake_clock.now = 107.5
    assert parent.snapshot() == {"sweep": 1.5}


def test_timed_without_a_clock_does_nothing():
    stages.stop()
    with stages.timed("anything"):
        pass
    assert stages.active() is None


def test_summary_and_one_line():
    durations = {"cli_start": 0.5, "measure": 3.0, "export": 1.5}
    assert stages.summary(durations) == {"wall_s": 5.0, "outside_window_s": 2.0}
    assert stages.summary({"train": 2.0}) == {"wall_s": 2.0}  # no measure loop: no window to leave out
    line = stages.one_line(durations, limit=2)
    assert line.startswith("time 5.00 s: measure 3.00 · export 1.50 · 1 others 0.50")


def test_process_start_is_in_the_past():
    started = stages.process_started()
    assert started is not None and started <= stages.clock()


def _check_contract(record: dict, outside_wall_s: float) -> dict[str, float]:
    records.validate(record)
    timings = record["metrics"]["stages"]
    assert timings and all(seconds >= 0 for seconds in timings.values()), timings
    assert sum(timings.values()) <= outside_wall_s, (timings, outside_wall_s)
    assert record["metrics"]["wall_s"] == pytest.approx(sum(timings.values()), abs=1e-3)
    assert record["schema"] == "harness.record/1.1"
    return timings


@pytest.mark.slow
def test_every_stage_of_an_isolated_run_is_in_its_record(tmp_path):
    started = time.monotonic()
    proc = run_cli("+scenario=bert_fp32", *FAST, "scenario.accuracy.enabled=false", "scenario.mfu=false", "--verbose", cwd=tmp_path)
    wall = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    (record,) = records_in(tmp_path / "results")
    timings = _check_contract(record, wall)
    assert PROCESS_STAGES <= set(timings), sorted(timings)
    assert "accuracy" not in timings and "roofline" not in timings  # not asked for, not run
    assert record["metrics"]["outside_window_s"] == pytest.approx(record["metrics"]["wall_s"] - timings["measure"], abs=1e-3)
    assert "where the time went" in proc.stdout and "write" in proc.stdout  # --verbose: the full table
    columns = {column["key"] for column in record["columns"]}
    assert {"metrics.wall_s", "metrics.outside_window_s"} <= columns
    from harness import results
    from harness.columns import format_value
    from harness.report import build

    table = build.build(results.load(tmp_path / "results")).sections[0].table  # the report shows them
    assert table["Outside window (s)"].tolist() == [format_value(record["metrics"]["outside_window_s"], "seconds")]


#: Two jobs of the same lean run (no accuracy pass, no roofline) that differ in batch size.
TWO_JOB_SWEEP = ("-m", "+scenario=bert_fp32", *FAST, "scenario.accuracy.enabled=false", "scenario.mfu=false", "scenario.batch_size=1,2")


@pytest.mark.slow
def test_each_job_of_a_sweep_has_its_own_stages(tmp_path):
    started = time.monotonic()
    proc = run_cli(
        *TWO_JOB_SWEEP,
        "launcher.isolation=inline",
        cwd=tmp_path,
    )
    wall = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    found = sorted(records_in(tmp_path / "results"), key=lambda r: r["job"]["num"])
    assert len(found) == 2
    first, second = (_check_contract(record, wall) for record in found)
    assert "cli_start" in first and "cli_start" not in second  # the command's start is the first job's
    assert "spawn" not in first and {"measure", "model_build"} <= set(second)  # inline: no run process
    assert sum(first.values()) + sum(second.values()) <= wall
    assert "time " in proc.stderr  # the one-line breakdown after each job


@pytest.mark.slow
def test_a_sweep_on_a_reused_worker_says_so_and_pays_the_start_once(tmp_path):
    proc = run_cli(
        *TWO_JOB_SWEEP,
        "launcher.reuse_worker=true",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    first, second = sorted(records_in(tmp_path / "results"), key=lambda r: r["job"]["num"])
    assert first["launcher"]["pid"] == second["launcher"]["pid"]
    assert (first["launcher"]["worker_job"], second["launcher"]["worker_job"]) == (1, 2)
    assert {"spawn", "imports"} <= set(first["metrics"]["stages"])
    assert "dispatch" in second["metrics"]["stages"] and "spawn" not in second["metrics"]["stages"]


def _imported_after(code: str, cwd=None) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """A fresh interpreter running ``code``, and the top-level modules it imported (``-X importtime``)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, timeout=300, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in proc.stderr.splitlines() if line.startswith("import time:") and "|" in line}
    return proc, names


def test_the_cli_path_imports_no_heavy_library():
    """Importing the CLI, discovering the plugins and checking a run's config leave torch,
    transformers and the runtimes to the run process."""
    code = (
        "from harness import cli, compose, precheck; from harness.plugins import get_plugins; "
        "p = get_plugins(); sp = p.config_searchpath(); "
        "c = precheck.check(['+scenario=bert_fp32', 'model=bert_tiny'], sp, compose.group_options(sp), p.registry); "
        "assert not c.problem, c.problem"
    )
    _, imported = _imported_after(code)
    assert "harness" in imported and "hydra" in imported
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))


def test_help_imports_no_heavy_library(tmp_path):
    proc, imported = _imported_after("import sys; from harness.cli import main; sys.argv[1:] = ['--help']; main()", cwd=tmp_path)
    assert "scenario" in proc.stdout
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))
