"""The run launcher: each run in a spawned child, and every way a child can end becomes a record.

These call :func:`harness.launcher.launch` in-process with the fault-injection backends
of ``tests/faultplugins`` (``+scenario=quick`` builds no model, so each run costs about
one interpreter start-up).
"""

from __future__ import annotations

import os
import resource
import signal
import time
from pathlib import Path

import pytest

from harness import records
from harness.launcher import LauncherOptions, launch

TESTS = Path(__file__).parent


@pytest.fixture
def faulty(monkeypatch):
    """Plugins with the fault backends, also visible to the child processes."""
    from harness.plugins import load_plugins

    monkeypatch.setenv("HARNESS_PLUGINS", "faultplugins.faulty")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
    return load_plugins()


def spec_for(plugins, *overrides: str, results_dir: Path | None = None):
    from harness.testing import compose_overrides

    return compose_overrides(["+scenario=quick", *overrides], plugins, results_dir)


def run(plugins, *overrides: str, **launcher) -> dict:
    record = launch(spec_for(plugins, *overrides), plugins, LauncherOptions(**launcher), status=lambda _m: None)
    records.validate(record)
    return record


def test_ok_run_happens_in_another_process_with_the_hub_off(faulty):
    record = run(faulty, "backend=numpy")
    assert record["status"] == "ok", record["reason"]
    assert record["launcher"]["isolation"] == "process"
    assert record["launcher"]["pid"] != os.getpid() and record["launcher"]["exitcode"] == 0
    assert record["metrics"]["latency_ms"]["count"] >= 10


def test_child_has_hub_access_off_even_if_the_parent_did_not_set_it(faulty, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    record = run(faulty, "backend=raises", "backend.fault=env", "backend.stage=probe")
    assert "HF_HUB_OFFLINE=1 " in record["reason"]
    assert f"pid={os.getpid()} " not in record["reason"]


def test_segfault_is_a_failed_record_naming_the_signal_with_the_stack(faulty):
    record = run(faulty, "backend=segfault")
    assert record["status"] == "failed"
    assert "SIGSEGV" in record["reason"] and "preparing segfault session" in record["reason"]
    assert record["launcher"]["signal"] == "SIGSEGV" and record["launcher"]["exitcode"] == -signal.SIGSEGV
    tail = "\n".join(record["error"]["stderr_tail"])
    assert "Segmentation fault" in tail and "faulty.py" in tail  # faulthandler's Python stack


def test_crash_while_probing_names_that_stage(faulty):
    record = run(faulty, "backend=segfault", "backend.stage=probe")
    assert "SIGSEGV" in record["reason"] and "during: probing backend 'segfault'" in record["reason"]


def test_abort_in_native_code_names_sigabrt(faulty):
    record = run(faulty, "backend=abort", "backend.stage=run")
    assert record["status"] == "failed" and "SIGABRT" in record["reason"]


def test_hang_is_killed_at_the_timeout_with_its_stack(faulty):
    record = run(faulty, "backend=hang", timeout_s=3)
    assert record["status"] == "timeout"
    assert "launcher.timeout_s=3" in record["reason"] and "preparing hang session" in record["reason"]
    assert 3 <= record["launcher"]["wall_s"] <= 3 + 10  # killed at the timeout, not when it chose to end
    assert any("in inject" in line for line in record["error"]["stderr_tail"])  # where it hung


def test_timeout_kills_the_whole_process_group(faulty, tmp_path):
    marker = tmp_path / "helper.pid"
    record = run(faulty, "backend=hang", "backend.fault=hang", f"backend.marker={marker}", timeout_s=3)
    assert record["status"] == "timeout"
    child = int(marker.read_text())
    for _ in range(50):  # the child is reaped by the launcher, so it is gone, not a zombie
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"run process {child} survived the timeout")


def test_helpers_a_run_leaves_behind_are_killed(faulty, tmp_path):
    """A run that started a helper process and hung: the helper dies with it."""
    marker = tmp_path / "helper.pid"
    record = run(faulty, "backend=hang", "backend.fault=orphan", f"backend.marker={marker}", timeout_s=4)
    assert record["status"] == "timeout"
    _assert_dies(int(marker.read_text().split()[-1]), "of the killed run is still alive")


def test_helpers_left_by_a_finished_run_are_killed(faulty, tmp_path):
    marker = tmp_path / "helper.pid"
    record = run(faulty, "backend=numpy", "backend.fault=leak", f"backend.marker={marker}")
    assert record["status"] == "ok", record["reason"]
    _assert_dies(int(marker.read_text().split()[-1]), "outlived the run that started it")


def _assert_dies(pid: int, problem: str) -> None:
    """Pass once ``pid`` is gone (within 5 s), else fail saying ``problem``."""
    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    pytest.fail(f"helper process {pid} {problem}")


def test_out_of_memory_under_the_limit_is_a_clear_failure(faulty):
    record = run(faulty, "backend=oom", memory_limit_mb=1024)
    assert record["status"] == "failed"
    assert record["reason"].startswith("out of memory") and "1024 MiB" in record["reason"]
    assert "memory_limit_mb" in record["reason"]
    assert resource.getrlimit(resource.RLIMIT_AS)[0] == resource.RLIM_INFINITY  # the parent is not limited


@pytest.mark.parametrize("stage", ["probe", "prepare", "run"])
def test_plugin_raising_is_one_line_naming_the_plugin_and_stage(faulty, stage):
    record = run(faulty, "backend=raises", f"backend.stage={stage}")
    assert record["status"] == "failed"
    reason = record["reason"]
    assert "\n" not in reason
    assert f"RuntimeError: injected failure in {stage}" in reason
    assert "plugin 'faulty'" in reason and "fix:" in reason
    assert record["error"]["traceback"][-1].startswith("RuntimeError")


def test_plugin_exiting_the_process_is_recorded(faulty):
    record = run(faulty, "backend=exits")
    assert record["status"] == "failed" and "exited with code 3" in record["reason"]


def test_inline_isolation_runs_in_this_process(faulty):
    record = run(faulty, "backend=numpy", isolation="inline")
    assert record["status"] == "ok" and record["launcher"] == {"isolation": "inline", "wall_s": record["launcher"]["wall_s"]}


def test_a_reused_worker_runs_the_next_jobs_and_a_crash_ends_it(faulty):
    from harness import launcher

    try:
        first, second = (run(faulty, "backend=numpy", reuse_worker=True) for _ in range(2))
        assert first["status"] == second["status"] == "ok", (first["reason"], second["reason"])
        assert first["launcher"]["pid"] == second["launcher"]["pid"] != os.getpid()
        assert (first["launcher"]["reuse_worker"], first["launcher"]["worker_job"], second["launcher"]["worker_job"]) == (True, 1, 2)
        assert "reused run process" in second["metrics"]["memory_source"]  # its peak RSS spans both jobs
        crashed = run(faulty, "backend=segfault", reuse_worker=True)
        assert crashed["status"] == "failed" and "SIGSEGV" in crashed["reason"]
        after = run(faulty, "backend=numpy", reuse_worker=True)  # a fresh worker, not the dead one
        assert after["status"] == "ok" and after["launcher"]["pid"] not in (first["launcher"]["pid"], crashed["launcher"]["pid"])
        assert after["launcher"]["worker_job"] == 1
    finally:
        launcher.close_reused_worker()
    fresh = run(faulty, "backend=numpy")
    assert "reuse_worker" not in fresh["launcher"] and fresh["launcher"]["exitcode"] == 0


def test_a_record_crosses_to_the_cli_as_plain_values():
    """A ``torch.__version__`` in a record would make the CLI import torch to unpickle it."""
    from torch.torch_version import TorchVersion

    from harness.launcher import plain

    out = plain({"backend": {"version": TorchVersion("2.13.0"), "device": "cpu"}, "devices": ("cpu",), "n": 1.5})
    assert out == {"backend": {"version": "2.13.0", "device": "cpu"}, "devices": ["cpu"], "n": 1.5}
    assert type(out["backend"]["version"]) is str


def test_parent_does_not_spin_while_it_waits(faulty):
    """Waiting 4 s on a hung child must cost the parent almost no CPU (no polling loop)."""
    spec = spec_for(faulty, "backend=hang")
    before = resource.getrusage(resource.RUSAGE_SELF)
    record = launch(spec, faulty, LauncherOptions(timeout_s=4), status=lambda _m: None)
    after = resource.getrusage(resource.RUSAGE_SELF)
    assert record["status"] == "timeout"
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu < 1.0, f"the parent used {cpu:.2f} s of CPU while waiting ~4 s"


def test_launcher_options_are_validated():
    from harness.config import typed
    from harness.errors import ConfigError

    with pytest.raises(ConfigError, match="launcher.isolation"):
        typed(LauncherOptions, {"isolation": "thread"}, "launcher")
    with pytest.raises(ConfigError, match="launcher.timeout_s"):
        typed(LauncherOptions, {"timeout_s": -1}, "launcher")
    with pytest.raises(ConfigError, match="launcher.memory_limit_mb"):
        typed(LauncherOptions, {"memory_limit_mb": 1}, "launcher")
    with pytest.raises(ConfigError, match="launcher.reuse_worker"):
        typed(LauncherOptions, {"reuse_worker": True, "isolation": "inline"}, "launcher")
    assert typed(LauncherOptions, {"timeout_s": None}, "launcher").timeout_s is None
