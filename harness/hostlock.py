"""One measurement at a time per host: an exclusive ``flock`` around each run.

A scheduler (Slurm, Ray, two terminals) can place two benchmark jobs on one machine.
Their measurement phases would then share cores, caches, memory bandwidth and the
accelerator's power budget, and both sets of numbers would be wrong without any sign
of it. So every run holds an exclusive lock on one file in a *host-local* folder while
it builds, exports and measures; a second run on the same host waits for it.

Why ``fcntl.flock`` on a file:

- the kernel releases it when the holder exits in any way (crash, ``SIGKILL``, a
  timeout kill), so a dead run never leaves the host locked;
- it needs no daemon and works for any user and any launcher on the host;
- a blocking ``flock`` costs nothing while it waits (no polling beside the holder's
  measurement).

The folder must be host-local. On NFS and similar filesystems Linux turns ``flock``
into a server-side lock shared by every client, which would serialise the whole
cluster (or, on some filesystems, not lock at all), so a lock folder on a network
filesystem is a configuration error. It is ``$HARNESS_LOCK_DIR`` when set, else a
folder private to the user (:func:`default_dir`): ``$XDG_RUNTIME_DIR/harness/locks``,
else ``~/.cache/harness/locks`` when that is host-local, else ``/tmp/harness-<uid>/locks``.

Why private: a lock file in a predictable, world-writable folder lets another user
plant a symlink there and have harness write to (and, formerly, chmod) the file it
points at. The default folders are created ``0700`` and must be owned by the user;
the lock file is opened with ``O_NOFOLLOW`` (a symlink is refused, its target left
untouched), must be a regular file with one link, and harness never changes the
permissions of any file. Runs of *several users* serialise only when they share a
folder: an administrator creates one (``install -d -m 1777 /var/lock/harness``) and
every user exports ``HARNESS_LOCK_DIR`` to it; another user's lock file is then opened
read-only, which ``flock`` allows.

The lock only serialises harness runs. Other tenants' jobs are the scheduler's
business: ask Slurm for the whole node (``--exclusive``, the ``harness_slurm`` launcher
preset does) when numbers matter.

What a run records (``HostLock.as_record()``): the lock path, the host, how long it
waited, who held the lock when it started waiting, who it is (pid and Slurm job), and
the wall-clock window in which it held the lock. Windows from one host never overlap; ``tests/test_hostlock.py`` checks
that with concurrent processes and ``tests/test_slurm.py`` with two Slurm jobs.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import stat
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from harness.errors import ConfigError, HarnessError

LOCK_NAME = "measure.lock"
#: Filesystems on which ``flock`` is not a host-local lock.
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "lustre",
        "gpfs",
        "beegfs",
        "ceph",
        "fuse.glusterfs",
        "glusterfs",
        "fuse.sshfs",
        "9p",
        "afs",
        "ocfs2",
        "gfs2",
        "fuse.juicefs",
        "fuse.s3fs",
        "panfs",
        "wekafs",
    }
)
#: Seconds between attempts when a timeout bounds the wait (blocking flock has none).
_POLL_S = 0.2


class LockTimeout(HarnessError):
    """The host stayed busy with another run for longer than the run may wait."""

    status = "timeout"
    exit_code = 6


@dataclass
class HostLock:
    """The lock one run held: where, on which host, how long it waited, and when it held it.

    ``acquired_at``/``released_at`` are wall-clock seconds (``time.time()``), the clock
    ``metrics.window`` uses too, so windows of different processes compare directly.
    """

    path: str
    host: str
    enabled: bool = True
    waited_s: float = 0.0
    acquired_at: float | None = None
    released_at: float | None = None
    holder_before: dict[str, Any] | None = None
    owner: dict[str, Any] | None = None
    joined: dict[str, Any] | None = None

    def as_record(self) -> dict[str, Any]:
        """The record's ``host_lock`` section."""
        return {
            "enabled": self.enabled,
            "path": self.path,
            "host": self.host,
            "waited_s": round(self.waited_s, 6),
            "acquired_at": self.acquired_at,
            "released_at": self.released_at,
            "holder_before": self.holder_before,
            "owner": self.owner,
            "joined": self.joined,
        }


def default_dir(mounts: str | None = None) -> Path:
    """This user's private lock folder (not created here).

    ``$XDG_RUNTIME_DIR/harness/locks`` (a per-user tmpfs on systemd hosts), else
    ``~/.cache/harness/locks`` when the home folder is host-local, else
    ``/tmp/harness-<uid>/locks`` (home folders on clusters are often on NFS).
    """
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and Path(runtime).is_absolute() and Path(runtime).is_dir():
        return Path(runtime) / "harness" / "locks"
    home = Path.home() / ".cache" / "harness" / "locks"
    if not _is_network(_existing_parent(home), mounts):
        return home
    return Path("/tmp") / f"harness-{os.getuid()}" / "locks"


def lock_path(path: str | os.PathLike[str] | None = None) -> Path:
    """The lock file: ``path`` if given, else ``$HARNESS_LOCK_DIR/measure.lock``, else
    ``measure.lock`` in this user's private :func:`default_dir`."""
    if path is not None:
        return Path(path)
    folder = os.environ.get("HARNESS_LOCK_DIR")
    return (Path(folder) if folder else default_dir()) / LOCK_NAME


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def filesystem_type(folder: str | os.PathLike[str], mounts: str | None = None) -> str | None:
    """Type of the filesystem holding ``folder`` (longest mount-point prefix in ``/proc/mounts``).

    ``mounts`` replaces the contents of ``/proc/mounts`` (for tests); None where unknown.
    """
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text(encoding="utf-8")
        except OSError:
            return None
    target = os.path.realpath(folder)
    best, best_type = "", None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, best_type = point, fields[2]
    return best_type


def _is_network(folder: str | os.PathLike[str], mounts: str | None = None) -> bool:
    fstype = filesystem_type(folder, mounts)
    return fstype is not None and (fstype in NETWORK_FILESYSTEMS or fstype.split(".")[0] in NETWORK_FILESYSTEMS)


def check_host_local(folder: str | os.PathLike[str], mounts: str | None = None) -> None:
    """Raise :class:`ConfigError` when ``folder`` is on a network filesystem."""
    if _is_network(folder, mounts):
        raise ConfigError(
            f"host lock folder {folder} is on a network filesystem ({filesystem_type(folder, mounts)}): a lock "
            "there is shared by every node (or not a lock at all), not one per host",
            f"export HARNESS_LOCK_DIR=<a host-local folder such as /tmp/harness-{os.getuid()}/locks>",
        )


def _private_folder(folder: Path) -> None:
    """Create ``folder`` (and missing parents) ``0700``; refuse one this user does not own
    or that others may write to (someone could plant files in it)."""
    missing = []
    at = folder
    while not at.exists() and at.parent != at:
        missing.append(at)
        at = at.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise ConfigError(f"cannot create the host lock folder {path}: {exc.strerror}", "export HARNESS_LOCK_DIR=<a folder this user can write>") from None
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(
            f"host lock folder {folder} is not a folder (a symlink or file is in the way)",
            f"remove {folder}, or export HARNESS_LOCK_DIR=<a folder of your own>",
        )
    # The folder must be ours alone; its parent too (whoever may rename entries there could
    # swap the folder for another), unless it is root's or a sticky folder such as /tmp.
    parent = os.stat(folder.parent)
    checks = (
        (folder, info, info.st_uid == os.getuid() and not info.st_mode & 0o022),
        (folder.parent, parent, parent.st_uid in (os.getuid(), 0) and (not parent.st_mode & 0o022 or bool(parent.st_mode & stat.S_ISVTX))),
    )
    for path, entry, safe in checks:
        if not safe:
            raise ConfigError(
                f"host lock folder {path} is not private to this user (owner uid {entry.st_uid}, "
                f"mode {stat.S_IMODE(entry.st_mode):o}): another user could plant files in it",
                f"remove {path} (harness recreates it 0700), or export HARNESS_LOCK_DIR=<a folder of your own>",
            )


def _open_lock_file(path: Path, private: bool) -> int:
    """Open (creating) the lock file without following a symlink; never change its mode.

    ``private``: the folder is harness's own default, which must be this user's alone.
    In a shared ``$HARNESS_LOCK_DIR`` another user's lock file is opened read-only
    (``flock`` needs no write access; only the holder note is skipped).
    """
    folder = path.parent
    if private:
        _private_folder(folder)
    elif not folder.is_dir():
        try:
            folder.mkdir(parents=True, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the host lock folder {folder}: {exc.strerror}", "export HARNESS_LOCK_DIR=<a folder this user can write>"
            ) from None
    check_host_local(folder)
    flags = os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        try:
            fd = os.open(path, os.O_RDWR | flags, 0o644)
        except PermissionError:
            fd = os.open(path, os.O_RDONLY | flags, 0o644)  # another user's file in a shared folder
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(
                f"host lock file {path} is a symlink: refusing to follow it (someone may be trying to make harness write to another file)",
                f"remove {path}, or export HARNESS_LOCK_DIR=<a folder of your own>",
            ) from None
        raise ConfigError(
            f"cannot open the host lock file {path}: {exc.strerror}",
            "export HARNESS_LOCK_DIR=<a folder this user can write>",
        ) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        what = "not a regular file" if not stat.S_ISREG(info.st_mode) else f"a file with {info.st_nlink} hard links"
        raise ConfigError(f"host lock file {path} is {what}: refusing to use it", f"remove {path}, or export HARNESS_LOCK_DIR=<a folder of your own>")
    os.set_blocking(fd, True)
    return fd


def check_lock(path: str | os.PathLike[str] | None = None) -> Path:
    """Open and close the lock file as a run would, without locking: a bad lock folder
    (a planted symlink, another user's folder, NFS) is then a config error before any
    run starts. Returns the lock file's path."""
    target = lock_path(path)
    os.close(_open_lock_file(target, private=_is_default(path)))
    return target


def _is_default(path: str | os.PathLike[str] | None) -> bool:
    """Whether the lock folder is harness's own default (not an argument or the env var)."""
    return path is None and not os.environ.get("HARNESS_LOCK_DIR")


def _holder(fd: int) -> dict[str, Any] | None:
    """What the current holder wrote into the lock file (informative: it may be mid-write)."""
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", errors="replace").strip()
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return None


def _owner(host: str, since: float, group: str | None = None) -> dict[str, Any]:
    """This process as a lock holder: pid, host, since when, its run group and scheduler job if any."""
    me: dict[str, Any] = {"pid": os.getpid(), "host": host, "since": since}
    if group:
        me["group"] = group
    for key in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "RAY_JOB_ID"):
        if os.environ.get(key):
            me[key.lower()] = os.environ[key]
    return me


def _announce(fd: int, me: dict[str, Any]) -> None:
    """Write who holds the lock, so a waiting run can say what it waits for."""
    data = (json.dumps(me) + "\n").encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    except OSError:
        pass


def _alive_here(holder: dict[str, Any]) -> bool:
    """Whether ``holder`` is a live process on this host: a holder killed with SIGKILL
    leaves its entry in the file until the next holder overwrites it."""
    if holder.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(holder.get("pid", -1)), 0)
    except PermissionError:
        return True  # alive, another user's
    except (OSError, ValueError, TypeError):
        return False
    return True


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another run"
    job = f", Slurm job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    return f"pid {holder.get('pid')}{job}"


@contextmanager
def measurement_lock(
    path: str | os.PathLike[str] | None = None,
    *,
    timeout_s: float | None = None,
    enabled: bool = True,
    on_wait: Callable[[str], None] | None = None,
    group: str | None = None,
) -> Iterator[HostLock]:
    """Hold this host's measurement lock for the body of the ``with`` block.

    ``timeout_s`` bounds the wait (None waits as long as the holder runs; its own run
    timeout bounds that); on expiry :class:`LockTimeout` is raised. ``on_wait`` gets one
    line when the lock is busy (e.g. the UI's stage printer). ``enabled=False`` yields
    a record saying so and locks nothing. The yielded :class:`HostLock` gets its
    ``released_at`` when the block ends.

    ``group`` names a run made of several ``harness`` processes (the nodes of one
    multi-node training run, keyed by their rendezvous). They are one measurement and
    must run together: a member that finds the lock held by its own group joins the
    holder (``HostLock.joined``) instead of waiting for it, which would deadlock, since
    the holder waits for this member at the rendezvous.
    """
    host = socket.gethostname()
    target = lock_path(path)
    lock = HostLock(path=str(target), host=host, enabled=enabled)
    if not enabled:
        yield lock
        return
    fd = _open_lock_file(target, private=_is_default(path))
    try:
        start = time.monotonic()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            lock.holder_before = _holder(fd)
            if on_wait is not None:
                on_wait(f"waiting for the host measurement lock {target} (held by {_describe(lock.holder_before)})")
            lock.joined = _wait(fd, target, timeout_s, start, group)
        lock.waited_s = time.monotonic() - start
        lock.acquired_at = time.time()
        if lock.joined is not None:
            if on_wait is not None:
                on_wait(f"joining {_describe(lock.joined)}, which holds the host lock for this same run ({group})")
            try:
                yield lock  # the holder's lock covers this member; there is nothing of ours to release
            finally:
                lock.released_at = time.time()
            return
        lock.owner = _owner(host, lock.acquired_at, group)
        _announce(fd, lock.owner)
        try:
            yield lock
        finally:
            lock.released_at = time.time()
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _wait(fd: int, target: Path, timeout_s: float | None, start: float, group: str | None = None) -> dict[str, Any] | None:
    """Block until this process holds the lock (None), or, for a ``group`` member, until
    the holder turns out to be of the same group (that holder's entry is returned)."""
    if timeout_s is None and group is None:
        fcntl.flock(fd, fcntl.LOCK_EX)  # sleeps in the kernel; retried after signals (PEP 475)
        return None
    deadline = None if timeout_s is None else start + timeout_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return None
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
        holder = _holder(fd) if group is not None else None
        if holder is not None and holder.get("group") == group and _alive_here(holder):
            return holder
        if deadline is not None and time.monotonic() >= deadline:
            raise LockTimeout(
                f"another run held the host measurement lock {target} for more than {timeout_s:g} s (now: {_describe(_holder(fd))})",
                "wait for it to finish, raise the lock timeout, or give each job its own node (sbatch --exclusive)",
            )
        time.sleep(_POLL_S if deadline is None else min(_POLL_S, max(0.0, deadline - time.monotonic())))


def windows_overlap(windows: list[tuple[float, float]]) -> list[tuple[int, int]]:
    """Index pairs of ``(start, end)`` windows that overlap (touching ends do not)."""
    order = sorted(range(len(windows)), key=lambda i: windows[i][0])
    clashes = []
    for a_pos, a in enumerate(order):
        for b in order[a_pos + 1 :]:
            if windows[b][0] >= windows[a][1]:
                break
            clashes.append((a, b))
    return clashes
