"""Faults around a run, through the real ``harness`` command: full and read-only disks,
a disk that fills during the run, a busy host lock, a planted lock symlink, signals.

Every case asserts the exit code, one ``harness: error:`` line with a fix, no traceback,
and that no record is lost or half-written. Disks are real: a small tmpfs, mounted
when the tests run as root (they skip otherwise). The fault plugin
(``tests/faultplugins``) supplies a quick scenario that builds no model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FAST, records_in, run_cli, start_cli

from harness import records

TESTS = Path(__file__).parent
FAULTS = {"HARNESS_PLUGINS": "faultplugins.faulty", "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))}


def error_line(proc: subprocess.CompletedProcess[str], code: int, needle: str) -> str:
    lines = [line for line in proc.stderr.splitlines() if "harness: error:" in line]
    assert proc.returncode == code, (proc.returncode, proc.stderr[-3000:])
    assert len(lines) == 1, proc.stderr[-3000:]
    assert needle in lines[0] and "(fix: " in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
    return lines[0]


def no_partial_files(folder: Path) -> None:
    if folder.exists():
        assert not list(folder.glob(".tmp-*")) and not list(folder.glob(".harness-probe-*"))
        assert not (folder / ".sweeps").exists()
        assert not (folder / ".multirun").exists()  # Hydra's empty job folders are pruned
        for path in folder.glob("*.json"):
            records.validate(json.loads(path.read_text()))


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a tmpfs of the given size in MiB under ``tmp_path`` (root only); unmounted after."""
    mounted: list[Path] = []

    def mount(size_mib: int, read_only: bool = False) -> Path:
        where = tmp_path / f"fs{len(mounted)}"
        where.mkdir()
        options = f"size={size_mib}m" + (",ro" if read_only else "")
        if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True).returncode != 0:
            pytest.skip("needs root and mount for a real small or read-only filesystem")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


# --- outputs found unwritable before anything runs -------------------------------------------------


@pytest.mark.parametrize("multirun", [False, True], ids=["run", "sweep"])
@pytest.mark.parametrize("disk", ["read-only", "full"])
def test_unwritable_results_dir_is_refused_before_measuring(disk, multirun, tmpfs, tmp_path):
    where = tmpfs(1, read_only=disk == "read-only")
    if disk == "full":
        try:
            (where / "filler").write_bytes(b"\0" * 2 * 2**20)
        except OSError:
            pass
    args = ["-m", "backend=numpy,raises"] if multirun else ["backend=numpy"]
    proc = run_cli(*args, "+scenario=quick", f"results_dir={where / 'results'}", cwd=tmp_path, env=FAULTS)
    line = error_line(proc, 2, "results_dir")
    assert ("Read-only file system" in line) if disk == "read-only" else ("full" in line)
    assert "measuring" not in proc.stderr and "job 0" not in proc.stderr  # refused before the first job
    assert not list(where.rglob("*.json"))


def test_results_dir_that_is_a_file_refuses_a_sweep_before_its_first_job(tmp_path):
    (tmp_path / "results").write_text("not a folder")
    proc = run_cli("-m", "backend=numpy,raises", "+scenario=quick", cwd=tmp_path, env=FAULTS)
    error_line(proc, 2, "results_dir 'results' cannot be a folder: 'results' is a file")
    assert "measuring" not in proc.stderr and (tmp_path / "results").read_text() == "not a folder"


# --- the disk fills during the run: the measurement is not lost ----------------------------------


def test_a_disk_that_fills_during_the_run_keeps_the_record_elsewhere(tmpfs, tmp_path):
    where = tmpfs(8)
    cache = tmp_path / "cache"
    proc = run_cli(
        "backend=numpy",
        "+scenario=quick",
        "backend.fault=fill",
        "backend.stage=run",
        f"backend.marker={where / 'marker'}",
        f"results_dir={where / 'results'}",
        f"cache_dir={cache}",
        cwd=tmp_path,
        env=FAULTS,
    )
    line = error_line(proc, 7, "could not write the record to")
    assert "No space left on device" in line and "the measurement is saved at" in line
    (saved,) = (cache / "unsaved-records").glob("*.json")
    assert str(saved) in line
    record = json.loads(saved.read_text())
    records.validate(record)
    assert record["status"] == "ok" and record["metrics"]["latency_ms"]["count"] > 0
    assert not list((where / "results").glob("*.json")) and not list((where / "results").glob(".tmp-*"))


# --- the host lock ---------------------------------------------------------------------------------


HOLD = r"""
import sys, time
from pathlib import Path
from harness.hostlock import measurement_lock
with measurement_lock(sys.argv[1]):
    Path(sys.argv[2]).touch()
    time.sleep(600)
"""


def test_an_unavailable_backend_does_not_wait_for_the_host_lock(tmp_path):
    """TensorRT absent: the answer comes while another run holds the lock (it used to
    queue behind it for minutes just to say "not installed")."""
    import importlib.util

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    locks = tmp_path / "locks"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(locks / "measure.lock"), str(tmp_path / "held")])
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "held").exists():
            assert time.monotonic() < deadline and holder.poll() is None
            time.sleep(0.1)
        proc = run_cli("+scenario=bert_fp32", "backend=tensorrt", *FAST, cwd=tmp_path, env={"HARNESS_LOCK_DIR": str(locks)}, timeout=500)
        assert holder.poll() is None  # still holding: the run never waited for it
    finally:
        holder.kill()
        holder.wait()
    error_line(proc, 3, "backend 'tensorrt' is unavailable")
    assert "waiting for the host measurement lock" not in proc.stderr
    (rec,) = records_in(tmp_path / "results")
    assert rec["status"] == "unavailable" and rec["host_lock"]["acquired_at"] is None


def test_a_planted_lock_symlink_is_refused_and_its_target_untouched(tmp_path):
    target = tmp_path / "victim.txt"
    target.write_text("precious\n")
    target.chmod(0o600)
    (tmp_path / "locks").mkdir()
    (tmp_path / "locks" / "measure.lock").symlink_to(target)
    proc = run_cli("backend=numpy", "+scenario=quick", cwd=tmp_path, env={**FAULTS, "HARNESS_LOCK_DIR": str(tmp_path / "locks")})
    error_line(proc, 2, "is a symlink: refusing to follow it")
    assert target.read_text() == "precious\n" and target.stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").glob("*.json"))


# --- signals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_a_single_run_records_it_interrupted(how, tmp_path):
    marker = tmp_path / "hang.pid"
    proc = start_cli("backend=flaky", "backend.fault=hang", f"++backend.marker={marker}", "+scenario=quick", cwd=tmp_path, env=FAULTS)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), proc.communicate(timeout=30)
        proc.send_signal(how)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + how, err
    lines = [line for line in err.splitlines() if "harness: error:" in line]
    assert lines == [
        f"harness: error: interrupted by {how.name}; the records written so far are kept (fix: run the same command again to finish the missing jobs)"
    ], err
    assert "Traceback" not in err
    (rec,) = records_in(tmp_path / "results")
    assert rec["status"] == "interrupted" and f"interrupted by {how.name} during: preparing flaky session" in rec["reason"]
    no_partial_files(tmp_path / "results")


def test_a_second_signal_exits_at_once():
    script = (
        "import os, signal, time\n"
        "from harness import interrupts\n"
        "interrupts.install()\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(5)\n"
        "except KeyboardInterrupt as exc:\n"
        "    print(exc.exit_code, flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(5)\n"
        "print('not reached')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["143"] and proc.returncode == 143
    assert "SIGTERM again: exiting now" in proc.stderr


# --- onnxruntime makes no network call -------------------------------------------------------------


TELEMETRY = r"""
import time
import numpy as np
import harness  # sets ORT_DISABLE_TELEMETRY before onnxruntime loads
import onnx, onnxruntime as ort
from onnx import TensorProto, helper
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString())
session.run(None, {"x": np.ones(2, np.float32)})
time.sleep(20)  # onnxruntime 1.32 uploads its telemetry some seconds after the session starts
"""


@pytest.mark.slow
def test_onnxruntime_telemetry_stays_off(tmp_path):
    import shutil

    if shutil.which("strace") is None:
        pytest.skip("strace is not installed (apt-get install strace)")
    trace = tmp_path / "trace.txt"
    env = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME")}
    proc = subprocess.run(
        ["strace", "-f", "-e", "trace=connect,sendto,openat", "-o", str(trace), sys.executable, "-c", TELEMETRY],
        capture_output=True,
        text=True,
        env={**env, "HOME": str(tmp_path)},
        timeout=300,
    )
    if proc.returncode != 0 and "ptrace" in proc.stderr:
        pytest.skip(f"strace cannot trace here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = trace.read_text()
    assert "mobile" not in text and "sin_port=htons(53)" not in text  # no DNS lookup of the telemetry host
    assert "onnxruntime.db" not in text and not (tmp_path / ".cache" / "Microsoft").exists()
