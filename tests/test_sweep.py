"""-m sweeps: job keys, resuming an interrupted sweep, the summary, and concurrent jobs.

The CLI tests use the fault-injection plugins (``tests/faultplugins``) with
``+scenario=quick``, which measures a small matmul and builds no model.
``++key=value`` sets keys whether or not the primary config declares them yet.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from conftest import records_in, run_cli, start_cli

from harness import records, sweep

TESTS = Path(__file__).parent
pytestmark = pytest.mark.slow


@pytest.fixture
def fault_env() -> dict[str, str]:
    return {
        "HARNESS_PLUGINS": "faultplugins.faulty",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])),
    }


# --- units -------------------------------------------------------------------------------------


def test_job_key_ignores_where_results_go_and_launcher_limits():
    config = {"backend": {"name": "onnxruntime"}, "scenario": {"batch_size": 8}, "results_dir": "a", "cache_dir": None}
    moved = {**config, "results_dir": "b", "cache_dir": "/c", "overwrite": True, "launcher": {"timeout_s": 5}}
    assert sweep.job_key(config) == sweep.job_key(moved)
    assert sweep.job_key(config) != sweep.job_key({**config, "scenario": {"batch_size": 16}})
    assert len(sweep.job_key(config)) == 20


def test_find_done_wants_an_ok_record_with_the_same_key(tmp_path):
    from test_records import make_record

    key = sweep.job_key({"x": 1})
    records.write(make_record(status="failed", reason="boom", job_key=key), tmp_path)
    records.write(make_record(job_key=sweep.job_key({"x": 2})), tmp_path)
    (tmp_path / "garbage.json").write_text("{not json")
    assert sweep.find_done(tmp_path, key) is None
    done = records.write(make_record(job_key=key), tmp_path)
    assert sweep.find_done(tmp_path, key) == done
    assert sweep.find_done(tmp_path / "missing", key) is None


def test_counts_line_and_summary():
    outcomes = [
        sweep.Outcome(0, ["backend=a"], "ok", 0, skipped=True, backend="a", scenario="s", p50_ms=1.0),
        sweep.Outcome(1, ["backend=b"], "ok", 0, backend="b", scenario="s", p50_ms=2.0),
        sweep.Outcome(2, ["backend=c"], "failed", 1, backend="c", scenario="s", reason="died from SIGSEGV"),
    ]
    assert sweep.counts_line(outcomes) == "sweep: 3 jobs: 2 ok (1 skipped: ok record already there), 1 failed"
    assert sweep.counts_line(outcomes, expected=4).endswith("1 ended without a result")
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(sweep.summary_table(outcomes))
    text = console.export_text()
    assert "SIGSEGV" in text and "ok (skipped)" in text


def test_ledger_round_trip(tmp_path, monkeypatch):
    folder = sweep.new_ledger()
    try:
        sweep.report(sweep.Outcome(1, ["a=1"], "ok", 0))
        sweep.report(sweep.Outcome(0, ["a=0"], "timeout", 6))
        assert [(o.num, o.status) for o in sweep.read_ledger(folder)] == [(0, "timeout"), (1, "ok")]
    finally:
        monkeypatch.delenv(sweep.LEDGER_ENV)


# --- the CLI -------------------------------------------------------------------------------------


def test_prune_sweep_dirs_keeps_folders_with_files(tmp_path):
    root = tmp_path / ".multirun"
    (root / "2026-01-01_00-00-00" / "0").mkdir(parents=True)
    (root / "2026-01-01_00-00-00" / "1").mkdir()
    (root / "2026-01-01_00-00-00" / "multirun.yaml").write_text("hydra: {}")
    logs = root / "2026-01-02_00-00-00" / ".submitit" / "123_0"
    logs.mkdir(parents=True)
    (logs / "123_0_log.out").write_text("slurm log")
    (root / "2026-01-02_00-00-00" / "multirun.yaml").write_text("hydra: {}")
    sweep.prune_sweep_dirs(root)
    assert not (root / "2026-01-01_00-00-00").exists()
    assert (logs / "123_0_log.out").read_text() == "slurm log"
    assert (root / "2026-01-02_00-00-00" / "multirun.yaml").is_file()  # beside the Slurm logs it stays
    sweep.prune_sweep_dirs(tmp_path / "absent")  # nothing to do, no error


def test_sweep_exit_code_is_zero_only_when_every_job_is_ok(tmp_path, fault_env):
    ok = run_cli("-m", "backend=numpy", "+scenario=quick", "scenario.size=8,16", cwd=tmp_path, env=fault_env)
    assert ok.returncode == 0, ok.stderr
    assert "sweep: 2 jobs: 2 ok" in ok.stdout and "sweep summary" in ok.stdout
    assert "· sweep: 2 jobs" in ok.stderr and "[1/2] job 0: " in ok.stderr and "[2/2] job 1: " in ok.stderr  # progress
    mixed = run_cli("-m", "backend=numpy,raises", "+scenario=quick", "results_dir=mixed", cwd=tmp_path, env=fault_env)
    assert mixed.returncode == 1
    assert "sweep: 2 jobs: 1 ok, 1 failed" in mixed.stdout
    assert sorted(r["status"] for r in records_in(tmp_path / "mixed")) == ["failed", "ok"]


def test_rerunning_a_sweep_skips_ok_jobs_and_overwrite_forces(tmp_path, fault_env):
    args = ["-m", "backend=numpy,raises", "+scenario=quick", "scenario.size=8,16"]
    first = run_cli(*args, cwd=tmp_path, env=fault_env)
    assert first.returncode == 1
    assert len(records_in(tmp_path / "results")) == 4
    second = run_cli(*args, cwd=tmp_path, env=fault_env)
    assert second.returncode == 1
    assert "2 ok (2 skipped: ok record already there), 2 failed" in second.stdout
    recs = records_in(tmp_path / "results")
    assert len(recs) == 6  # failed jobs ran again, ok ones did not
    assert sorted(r["status"] for r in recs) == ["failed"] * 4 + ["ok"] * 2
    forced = run_cli(*args, "++overwrite=true", cwd=tmp_path, env=fault_env)
    assert "skipped" not in forced.stdout
    assert len(records_in(tmp_path / "results")) == 10
    # a single run (no -m) always measures again
    assert run_cli("backend=numpy", "+scenario=quick", "scenario.size=8", cwd=tmp_path, env=fault_env).returncode == 0
    assert len(records_in(tmp_path / "results")) == 11


def _gone(pid: int, within_s: float = 10.0) -> bool:
    """True once ``pid`` has exited (a zombie awaiting its reaper counts as exited)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                if handle.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except (FileNotFoundError, ProcessLookupError):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM], ids=["SIGKILL", "SIGINT", "SIGTERM"])
def test_killed_sweep_resumes_with_only_the_missing_jobs(tmp_path, fault_env, how):
    """Job 2 hangs the first time; the sweep is stopped there, then re-run to completion.

    SIGINT (Ctrl-C) and SIGTERM (Slurm, CI) are handled alike: the running job gets an
    ``interrupted`` record, the summary is printed once, no ledger stays behind, exit
    ``128 + signal``. SIGKILL cannot be handled: the running job just has no record.
    """
    marker = tmp_path / "flaky.pid"
    args = ["-m", "backend=numpy,flaky,numpy", "+scenario=quick", f"++backend.marker={marker}", "scenario.size=8,16"]
    # backend=numpy appears twice: the duplicate jobs are skipped as already done
    proc = start_cli(*args, cwd=tmp_path, env=fault_env)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert marker.exists(), proc.communicate(timeout=10)
        time.sleep(0.5)
        before = records_in(tmp_path / "results")
        assert [r["backend"]["name"] for r in before] == ["numpy", "numpy"]  # jobs 0 and 1 (sizes 8, 16)
        proc.send_signal(how)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    hung_run = int(marker.read_text())
    assert _gone(hung_run), "the hung run process outlived its sweep"
    recs = records_in(tmp_path / "results")
    if how == signal.SIGKILL:
        assert len(recs) == 2  # nothing half-written, nothing lost
    else:
        assert proc.returncode == 128 + how
        errors = [line for line in err.splitlines() if "harness: error:" in line]
        assert errors == [
            f"harness: error: interrupted by {how.name}; the records written so far are kept (fix: run the same command again to finish the missing jobs)"
        ], err
        assert "sweep summary" in out and "sweep: 6 jobs: 2 ok, 1 interrupted, 3 not started" in out
        assert [r["status"] for r in recs].count("interrupted") == 1 and len(recs) == 3
        (stopped,) = [r for r in recs if r["status"] == "interrupted"]
        assert stopped["backend"]["name"] == "flaky" and f"interrupted by {how.name}" in stopped["reason"]
        records.validate(stopped)
        assert not (tmp_path / "results" / ".sweeps").exists()
    assert not list((tmp_path / "results").glob(".tmp-*"))

    again = run_cli(*args, cwd=tmp_path, env=fault_env)
    assert again.returncode == 0, again.stderr
    assert "sweep: 6 jobs: 6 ok (4 skipped: ok record already there)" in again.stdout
    assert not (tmp_path / "results" / ".multirun").exists()  # Hydra's empty job folders are pruned
    recs = [r for r in records_in(tmp_path / "results") if r["status"] == "ok"]
    assert sorted(r["backend"]["name"] for r in recs) == ["flaky", "flaky", "numpy", "numpy"]
    assert len({r["job_key"] for r in recs}) == 4


def test_concurrent_jobs_leave_one_valid_record_each(tmp_path, fault_env):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="hydra-joblib-launcher is not installed")
    proc = run_cli(
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=4",
        "backend=numpy,segfault",
        "+scenario=quick",
        "scenario.size=8,16,24,32",
        cwd=tmp_path,
        env=fault_env,
    )
    assert proc.returncode == 1, proc.stderr
    recs = records_in(tmp_path / "results")
    assert len(recs) == 8
    for rec in recs:
        records.validate(rec)
    assert len({r["run_id"] for r in recs}) == 8
    assert sorted(r["status"] for r in recs) == ["failed"] * 4 + ["ok"] * 4
    assert "sweep: 8 jobs: 4 ok, 4 failed" in proc.stdout


def _write_many(folder: str, count: int) -> None:
    from test_records import make_record

    for _ in range(count):
        records.write(make_record(), folder)


def test_many_processes_writing_at_once_leave_every_record_whole(tmp_path):
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_write_many, args=(str(tmp_path), 25)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 100
    for path in files:
        records.validate(json.loads(path.read_text()))
    assert not list(tmp_path.glob(".tmp-*"))


def test_the_nodes_of_one_run_share_its_job_key():
    """node_rank and the rendezvous differ per node and per attempt, not in what the job measures."""
    from harness.sweep import job_key

    def config(rank: int, endpoint: str, steps: int = 8) -> dict:
        return {"scenario": {"name": "bert_train", "max_steps": steps, "distributed": {"nnodes": 2, "node_rank": rank, "rdzv_endpoint": endpoint}}}

    assert job_key(config(0, "n1:20001")) == job_key(config(1, "n1:20001")) == job_key(config(0, "n1:20002"))
    assert job_key(config(0, "n1:20001")) != job_key(config(0, "n1:20001", steps=16))
