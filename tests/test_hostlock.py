"""The host measurement lock: concurrent runs on one host never overlap their measurements.

Real processes contend for a real ``flock`` here: each worker process takes the lock,
"measures" (spins the CPU while recording its wall-clock window, as ``measure()`` does)
and prints what it recorded. The tests assert the recorded windows, never durations.
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

from harness.errors import ConfigError
from harness.hostlock import (
    LockTimeout,
    check_host_local,
    check_lock,
    default_dir,
    filesystem_type,
    lock_path,
    measurement_lock,
    windows_overlap,
)

# One worker: announce it is ready, wait for the go file, then `rounds` times: take the lock
# (touching `waiting` if it has to wait), touch `held`, record the window of a busy
# "measurement" lasting `hold_s` or until the `until` file exists, release. Prints one JSON
# line per round. Flag files (and the lock group) are "-" when unused.
WORKER = r"""
import json, os, sys, time
from pathlib import Path
from harness.hostlock import measurement_lock

lock, go, hold_s, rounds, held, waiting, until, group = sys.argv[1:9]
group = None if group == "-" else group
hold_s, rounds = float(hold_s), int(rounds)
flag = lambda name: None if name == "-" else Path(name)
held, waiting, until, go = flag(held), flag(waiting), flag(until), Path(go)
(go.parent / f"ready-{os.getpid()}").touch()
while not go.exists():
    time.sleep(0.005)
for _ in range(rounds):
    with measurement_lock(lock, on_wait=lambda line: waiting and waiting.touch(), group=group) as lock_held:
        if held:
            held.touch()
        start = time.time()
        while (until and not until.exists() and time.time() - start < 60) or (not until and time.time() - start < hold_s):
            pass                                   # a CPU-bound "measurement"
        end = time.time()
    print(json.dumps({"pid": os.getpid(), "start": start, "end": end, "lock": lock_held.as_record()}), flush=True)
"""


def _worker(
    lock: Path,
    go: Path,
    hold_s: float = 0.0,
    rounds: int = 1,
    held: Path | None = None,
    waiting: Path | None = None,
    until: Path | None = None,
    group: str | None = None,
) -> subprocess.Popen[str]:
    flags = [str(f) if f else "-" for f in (held, waiting, until, group)]
    args = [sys.executable, "-c", WORKER, str(lock), str(go), str(hold_s), str(rounds), *flags]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _results(proc: subprocess.Popen[str]) -> list[dict]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def _wait_for(path: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


# --- where the lock lives --------------------------------------------------------------------


def test_lock_path_prefers_argument_then_env_then_a_private_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HARNESS_LOCK_DIR", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    assert lock_path() == tmp_path / "run" / "harness" / "locks" / "measure.lock"
    monkeypatch.setenv("HARNESS_LOCK_DIR", str(tmp_path))
    assert lock_path() == tmp_path / "measure.lock"
    assert lock_path(tmp_path / "x.lock") == tmp_path / "x.lock"


def test_default_folder_is_never_the_shared_tmp_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    assert default_dir() == tmp_path / "home" / ".cache" / "harness" / "locks"
    nfs_home = f"fs1:/home {tmp_path / 'home'} nfs4 rw 0 0\n"
    assert default_dir(mounts=nfs_home) == Path(f"/tmp/harness-{os.getuid()}/locks")  # homes on NFS: host-local /tmp


def test_default_folder_is_created_private(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HARNESS_LOCK_DIR", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    with measurement_lock() as held:
        pass
    folder = Path(held.path).parent
    assert folder == tmp_path / "harness" / "locks"
    assert (folder.stat().st_mode & 0o777) == 0o700 and (folder.parent.stat().st_mode & 0o777) == 0o700
    assert (Path(held.path).stat().st_mode & 0o022) == 0  # nobody else may write the lock file


@pytest.mark.parametrize("where", ["lock file", "lock folder"])
def test_a_planted_symlink_leaves_its_target_unchanged(where: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The attack the old world-writable /tmp/harness-locks allowed: a symlink at the lock
    path made harness truncate its target and chmod it 0666."""
    target = tmp_path / "victim.txt"
    target.write_text("precious\n")
    target.chmod(0o600)
    before = (target.read_bytes(), target.stat().st_mode, target.stat().st_mtime_ns)
    monkeypatch.delenv("HARNESS_LOCK_DIR", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    folder = tmp_path / "run" / "harness" / "locks"
    if where == "lock file":
        folder.mkdir(parents=True, mode=0o700)
        (tmp_path / "run" / "harness").chmod(0o700)
        (folder / "measure.lock").symlink_to(target)
    else:
        (tmp_path / "run" / "harness").mkdir(parents=True, mode=0o700)
        folder.symlink_to(tmp_path)
    with pytest.raises(ConfigError) as err:
        with measurement_lock():
            pass
    assert "symlink" in err.value.one_line() and "(fix: " in err.value.one_line()
    with pytest.raises(ConfigError):
        check_lock()
    assert (target.read_bytes(), target.stat().st_mode, target.stat().st_mtime_ns) == before


def plant_symlink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A lock folder (``$HARNESS_LOCK_DIR``) whose ``measure.lock`` is a symlink to a file
    with content; returns that file."""
    target = tmp_path / "victim.txt"
    target.write_text("precious\n")
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "measure.lock").symlink_to(target)
    monkeypatch.setenv("HARNESS_LOCK_DIR", str(tmp_path / "shared"))
    return target


def test_symlink_in_an_explicit_lock_folder_is_refused_too(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    target = plant_symlink(tmp_path, monkeypatch)
    with pytest.raises(ConfigError, match="symlink"):
        check_lock()
    assert target.read_text() == "precious\n"


def test_a_fifo_or_hard_link_at_the_lock_path_is_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.lock")
    with pytest.raises(ConfigError, match="not a regular file"):
        check_lock(tmp_path / "fifo.lock")
    (tmp_path / "victim").write_text("x")
    os.link(tmp_path / "victim", tmp_path / "linked.lock")
    with pytest.raises(ConfigError, match="hard links"):
        check_lock(tmp_path / "linked.lock")
    assert (tmp_path / "victim").read_text() == "x"


def test_a_default_folder_others_can_write_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HARNESS_LOCK_DIR", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    folder = tmp_path / "harness" / "locks"
    folder.mkdir(parents=True)
    folder.chmod(0o777)
    with pytest.raises(ConfigError, match="not private to this user"):
        check_lock()


def test_harness_never_changes_the_mode_of_a_lock_file(tmp_path: Path) -> None:
    existing = tmp_path / "measure.lock"
    existing.write_text("")
    existing.chmod(0o640)
    with measurement_lock(existing):
        pass
    assert existing.stat().st_mode & 0o777 == 0o640


MOUNTS = """\
overlay / overlay rw 0 0
tmpfs /tmp tmpfs rw 0 0
fs1:/export/home /shared nfs4 rw 0 0
/dev/sdb1 /shared/scratch ext4 rw 0 0
"""


def test_filesystem_type_takes_the_longest_mount_prefix() -> None:
    assert filesystem_type("/tmp/harness-locks", MOUNTS) == "tmpfs"
    assert filesystem_type("/shared/results", MOUNTS) == "nfs4"
    assert filesystem_type("/shared/scratch/locks", MOUNTS) == "ext4"
    assert filesystem_type("/sharedx", MOUNTS) == "overlay"  # a prefix of the name is not a parent


def test_network_filesystem_is_a_config_error_naming_the_fix() -> None:
    with pytest.raises(ConfigError) as err:
        check_host_local("/shared/locks", MOUNTS)
    line = err.value.one_line()
    assert "nfs4" in line and "HARNESS_LOCK_DIR" in line
    check_host_local("/tmp/harness-locks", MOUNTS)
    check_host_local("/shared/scratch/locks", MOUNTS)


# --- one process ---------------------------------------------------------------------------


def test_free_lock_records_its_window_and_owner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    before = time.time()
    with measurement_lock(tmp_path / "locks" / "measure.lock") as held:
        assert held.acquired_at is not None and held.released_at is None
        holder = json.loads((tmp_path / "locks" / "measure.lock").read_text())
        assert holder["pid"] == os.getpid()
    record = held.as_record()
    assert record["enabled"] is True and record["holder_before"] is None
    assert record["owner"]["pid"] == os.getpid() and record["owner"]["slurm_job_id"] == "4242"
    assert before <= record["acquired_at"] <= record["released_at"] <= time.time()
    assert record["waited_s"] >= 0
    assert (tmp_path / "locks" / "measure.lock").read_text() == ""  # holder info cleared on release


def test_disabled_lock_locks_nothing(tmp_path: Path) -> None:
    with measurement_lock(tmp_path / "locks" / "measure.lock", enabled=False) as held:
        pass
    assert held.as_record()["enabled"] is False and held.acquired_at is None
    assert not (tmp_path / "locks").exists()


def test_lock_is_released_when_the_body_raises(tmp_path: Path) -> None:
    lock = tmp_path / "measure.lock"
    with pytest.raises(RuntimeError):
        with measurement_lock(lock):
            raise RuntimeError("the run failed")
    with measurement_lock(lock, timeout_s=1.0) as held:
        assert held.holder_before is None


# --- several processes on one host -----------------------------------------------------------


def test_second_process_waits_for_the_first_and_names_it(tmp_path: Path) -> None:
    lock, go = tmp_path / "measure.lock", tmp_path / "go"
    first_holds, second_waits = tmp_path / "first-holds", tmp_path / "second-waits"
    go.touch()
    first = _worker(lock, go, held=first_holds, until=second_waits)  # holds until the second waits
    _wait_for(first_holds)
    second = _worker(lock, go, hold_s=0.1, waiting=second_waits)
    (a,), (b,) = _results(first), _results(second)
    assert b["lock"]["holder_before"]["pid"] == a["pid"]
    assert b["lock"]["waited_s"] > 0
    assert b["lock"]["acquired_at"] >= a["lock"]["released_at"]
    assert windows_overlap([(a["start"], a["end"]), (b["start"], b["end"])]) == []


def test_concurrent_processes_never_overlap_their_measurements(tmp_path: Path) -> None:
    lock, go = tmp_path / "measure.lock", tmp_path / "go"
    workers = [_worker(lock, go, hold_s=0.1, rounds=3) for _ in range(4)]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready-*"))) < len(workers):  # every interpreter is up
        assert time.monotonic() < deadline and all(w.poll() is None for w in workers), "a worker did not start"
        time.sleep(0.01)
    go.touch()
    rounds = [r for w in workers for r in _results(w)]
    assert len(rounds) == 12 and len({r["pid"] for r in rounds}) == 4
    assert windows_overlap([(r["start"], r["end"]) for r in rounds]) == []
    assert windows_overlap([(r["lock"]["acquired_at"], r["lock"]["released_at"]) for r in rounds]) == []
    assert any(r["lock"]["waited_s"] > 0 for r in rounds)  # released together, they did contend


def test_a_killed_holder_frees_the_host(tmp_path: Path) -> None:
    lock, go, held_flag = tmp_path / "measure.lock", tmp_path / "go", tmp_path / "holds"
    go.touch()
    holder = _worker(lock, go, hold_s=600, held=held_flag)
    _wait_for(held_flag)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    with measurement_lock(lock, timeout_s=30) as held:
        assert held.acquired_at is not None


def test_waiting_past_the_timeout_is_a_timeout_naming_the_holder(tmp_path: Path) -> None:
    lock, go, held_flag = tmp_path / "measure.lock", tmp_path / "go", tmp_path / "holds"
    go.touch()
    holder = _worker(lock, go, hold_s=600, held=held_flag)
    try:
        _wait_for(held_flag)
        messages: list[str] = []
        with pytest.raises(LockTimeout) as err:
            with measurement_lock(lock, timeout_s=0.3, on_wait=messages.append):
                pytest.fail("the lock was held by another process")
        assert err.value.status == "timeout" and err.value.exit_code == 6
        assert f"pid {holder.pid}" in err.value.one_line()
        assert len(messages) == 1 and f"pid {holder.pid}" in messages[0]
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_a_member_of_the_holders_run_joins_it_instead_of_waiting(tmp_path: Path) -> None:
    """Two nodes of one multi-node run on one host: waiting would deadlock (the holder waits
    for this member at the rendezvous), so the member joins the holder's lock."""
    lock, go, held_flag = tmp_path / "measure.lock", tmp_path / "go", tmp_path / "holds"
    go.touch()
    holder = _worker(lock, go, hold_s=600, held=held_flag, group="torchrun rendezvous h:29500")
    try:
        _wait_for(held_flag)
        messages: list[str] = []
        with measurement_lock(lock, group="torchrun rendezvous h:29500", on_wait=messages.append) as member:
            assert member.joined is not None and member.joined["pid"] == holder.pid
            assert member.owner is None  # it holds nothing of its own
        assert member.as_record()["joined"]["group"] == "torchrun rendezvous h:29500"
        assert any("joining" in line and f"pid {holder.pid}" in line for line in messages)
        with pytest.raises(LockTimeout):  # another run's member still waits
            with measurement_lock(lock, timeout_s=0.3, group="torchrun rendezvous h:29501"):
                pytest.fail("a run of another group got the lock")
    finally:
        holder.kill()
        holder.wait(timeout=30)


# --- the overlap check itself ----------------------------------------------------------------


def test_windows_overlap_finds_exactly_the_overlapping_pairs() -> None:
    windows = [(0.0, 1.0), (1.0, 2.0), (1.5, 3.0), (5.0, 6.0), (0.2, 0.4)]
    assert sorted(tuple(sorted(p)) for p in windows_overlap(windows)) == [(0, 4), (1, 2)]
    assert windows_overlap([]) == [] and windows_overlap([(0.0, 1.0)]) == []
