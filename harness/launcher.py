"""Run isolation: each run in its own spawned process, bounded in time and memory.

Native runtimes segfault, deadlock their thread pools and run out of memory. If a
run shared the CLI's process, one crash would end a 40-job sweep and lose the
explanation with it. So by default (``launcher.isolation=process``) every run goes
to a fresh child started with the ``spawn`` method (no inherited thread pools or
CUDA contexts), and the parent turns whatever happens to the child into a record:

- the child returns its record through a pipe;
- death by a signal becomes ``failed`` naming the signal (``SIGSEGV``...);
- a run longer than ``launcher.timeout_s`` gets its Python stack dumped (faulthandler
  on ``SIGUSR1``), its process group killed, and a ``timeout`` record;
- ``launcher.memory_limit_mb`` caps the child's address space (``RLIMIT_AS``), so a
  runaway allocation is a ``MemoryError`` in the child, not a swapping machine;
- the last lines the child wrote to stderr travel in the record (``error.stderr_tail``).

The parent never competes with the run for the cores: it blocks in
``multiprocessing.connection.wait`` on the result pipe, the child's stderr pipe and
the process sentinel, with the time left as the timeout. It wakes only when the
child writes a stage message (a few per run) or ends; there is no polling loop and
no thread. The child sits in its own process group (a timeout kills its helpers
too) and asks the kernel to kill it if the parent dies, so a killed sweep leaves
no orphan measuring on the cores.

``launcher.isolation=inline`` runs in the CLI's process, for debuggers and profilers.
"""

from __future__ import annotations

import codecs
import contextlib
import atexit
import copy
import ctypes
import faulthandler
import multiprocessing
import os
import re
import resource
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Optional

from harness import stages
from harness.config import RunSpec
from harness.errors import HarnessError
from harness.plugins import Plugins
from harness.runner import base_record, execute
from harness.validation import choice, require

ISOLATIONS = ("process", "inline")
#: Lines of the child's stderr kept in a failed record.
TAIL_LINES = 30
_TAIL_BYTES = 64 * 1024
#: Seconds given to faulthandler to dump a hung child's stacks before the kill.
_DUMP_GRACE_S = 2.0
#: Seconds a child that already returned its record gets to exit on its own.
_EXIT_GRACE_S = 30.0
_PR_SET_PDEATHSIG = 1
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@dataclass
class LauncherOptions:
    """The ``launcher`` config node: how each run is isolated and bounded.

    ``timeout_s`` is wall-clock for the whole run (model build, export, measurement);
    ``null`` waits forever. ``memory_limit_mb`` limits the child's virtual address
    space; leave it ``null`` on GPUs, whose drivers reserve large address ranges.
    ``reuse_worker``: the jobs of a sweep share one run process (started, imported and
    plugins discovered once) instead of a fresh one each; a job that fails, times out
    or crashes ends it and the next job gets a fresh one. Less fault isolation (state
    a job leaves in the process, e.g. thread settings, reaches the next), so it is
    opt-in and each record says so (``launcher.reuse_worker``, ``launcher.worker_job``).
    """

    isolation: str = "process"
    timeout_s: Optional[float] = 600.0
    memory_limit_mb: Optional[int] = None
    host_lock: bool = True
    host_lock_timeout_s: Optional[float] = None
    reuse_worker: bool = False

    def __post_init__(self) -> None:
        choice(self.isolation, ISOLATIONS, "isolation")
        require(
            not (self.reuse_worker and self.isolation != "process"),
            "reuse_worker",
            f"runs jobs in a worker process, so it needs isolation=process (got isolation={self.isolation})",
        )
        require(self.timeout_s is None or self.timeout_s > 0, "timeout_s", f"must be > 0 seconds or null, got {self.timeout_s}")
        require(
            self.memory_limit_mb is None or self.memory_limit_mb >= 64,
            "memory_limit_mb",
            f"must be >= 64 MiB or null, got {self.memory_limit_mb}",
        )
        require(
            self.host_lock_timeout_s is None or self.host_lock_timeout_s > 0,
            "host_lock_timeout_s",
            f"must be > 0 seconds or null, got {self.host_lock_timeout_s}",
        )


def launch(
    spec: RunSpec,
    plugins: Plugins,
    options: LauncherOptions,
    status: Callable[[str], None] = print,
    progress: Callable[[str, int, float], None] | None = None,
) -> dict[str, Any]:
    """Run ``spec`` as ``options`` say and return its record (not yet written).

    Never raises for a run that started, except ``KeyboardInterrupt`` (Ctrl-C, or
    SIGTERM turned into :class:`harness.errors.Interrupted` by the CLI): the run process
    is killed first, and the exception carries the run's record, status
    ``interrupted``, as its ``record`` attribute so the caller can still write it.
    """
    # One measurement per host at a time (docs/fleet.md). The lock is taken by the parent,
    # after the run has probed its backend (an unavailable backend never queues for it) and
    # before anything is built: waiting behind another job is not run time, and the rest
    # of the run (build, export, measure) is covered, since all of it disturbs a
    # neighbour's timings.
    gate = _LockGate(options, lock_group(spec), status)
    started = time.monotonic()
    with stages.timed("record_setup"):
        base = base_record(spec, plugins)  # the run's record, assembled once; the run fills it in
    try:
        with gate:
            if options.isolation == "inline":
                record = execute(spec, plugins, status=status, progress=progress, after_probe=gate.acquire, record=copy.deepcopy(base))
                record["launcher"] = {"isolation": "inline", "wall_s": round(time.monotonic() - started - gate.waited_s, 3)}
            else:
                record = _run_in_child(spec, plugins, options, status, gate, base)
    except HarnessError as exc:  # lock timeout, or a lock folder on a network filesystem
        record = base
        record["status"], record["reason"] = exc.status, exc.one_line()
        record["error"] = {"type": type(exc).__name__}
    except KeyboardInterrupt as exc:
        if getattr(exc, "record", None) is None:  # inline, or before the run process started
            record = base
            _mark_interrupted(record, exc, "the run")
            exc.record = record  # type: ignore[attr-defined]
        exc.record["host_lock"] = gate.as_record()  # type: ignore[attr-defined]
        raise
    record["host_lock"] = gate.as_record()
    return record


def _mark_interrupted(record: dict[str, Any], exc: BaseException, stage: str) -> None:
    """Turn ``record`` into the record of a run stopped by a signal to the CLI."""
    name = getattr(exc, "name", "SIGINT")
    record["status"] = "interrupted"
    record["reason"] = f"interrupted by {name} during: {stage} (fix: run the same command again; a -m sweep skips the jobs that already have an ok record)"
    record.setdefault("error", {})["type"] = "Interrupted"


class _LockGate:
    """The host lock, taken when the run asks (:meth:`acquire`, after its probe) and
    released when the ``with`` block ends; never taken for a run that ends first."""

    def __init__(self, options: LauncherOptions, group: str | None, on_wait: Callable[[str], None]) -> None:
        self.options, self.group, self.on_wait = options, group, on_wait
        self.stack = contextlib.ExitStack()
        self.lock: Any = None

    def __enter__(self) -> "_LockGate":
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self.stack.__exit__(*exc)

    def acquire(self) -> None:
        from harness.hostlock import measurement_lock

        if self.lock is None:
            self.lock = self.stack.enter_context(
                measurement_lock(enabled=self.options.host_lock, timeout_s=self.options.host_lock_timeout_s, on_wait=self.on_wait, group=self.group)
            )

    @property
    def waited_s(self) -> float:
        return self.lock.waited_s if self.lock is not None else 0.0

    def as_record(self) -> dict[str, Any]:
        """The record's ``host_lock``; ``acquired_at`` null when the run never took it."""
        if self.lock is not None:
            return self.lock.as_record()
        from harness.hostlock import HostLock

        return HostLock(path="", host=socket.gethostname(), enabled=self.options.host_lock).as_record()


def lock_group(spec: RunSpec) -> str | None:
    """The run several ``harness`` processes make together, if any: the nodes of one
    multi-node run, named by their job key and the group their scenario kind declares
    (``hostlock`` lets them share the host lock when two of them land on one host). The
    job key keeps back-to-back sweep jobs of the same group apart."""
    if spec.lock_group is None:
        return None
    return f"job {spec.job.key} at {spec.lock_group}"


# --- parent side -------------------------------------------------------------------------


class _StderrTail:
    """Echoes the child's stderr bytes to ours and keeps the last ``_TAIL_BYTES``."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, chunk: bytes) -> None:
        self.buffer += chunk
        del self.buffer[:-_TAIL_BYTES]
        try:
            sys.stderr.write(self.decoder.decode(chunk))
            sys.stderr.flush()
        except (OSError, ValueError):  # our stderr is gone; keep collecting the tail
            pass

    def lines(self) -> list[str]:
        text = _ANSI.sub("", self.buffer.decode("utf-8", errors="replace"))
        lines = [line.rstrip() for line in re.split(r"[\r\n]+", text)]
        return [line[:400] for line in lines if line.strip()][-TAIL_LINES:]


def _read_available(fd: int, tail: _StderrTail) -> bool:
    """Read what the pipe holds now; return False at end of file."""
    try:
        chunk = os.read(fd, 65536)
    except BlockingIOError:
        return True
    except OSError:
        return False
    if not chunk:
        return False
    tail.feed(chunk)
    return True


def _drain(fd: int, tail: _StderrTail) -> None:
    """Read everything left in the pipe without blocking (a grandchild may hold it open)."""
    os.set_blocking(fd, False)
    while _read_available(fd, tail):
        try:
            if not wait([fd], timeout=0):
                return
        except OSError:
            return


def _kill_group(process: multiprocessing.process.BaseProcess, sig: int = signal.SIGKILL) -> None:
    """Signal the child's process group (its helpers too); the child if it has none yet.

    Called only while the child is unreaped (running or a zombie), so its pid, which
    is the group id, cannot have been reused by an unrelated process.
    """
    pid = process.pid
    if pid is None:
        return
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
            return
    except (ProcessLookupError, PermissionError):
        pass
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _signal_name(number: int) -> tuple[str, str]:
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    return name, signal.strsignal(number) or name


#: Signals that stop a run on purpose (``scancel``, ``kill``, Ctrl-C): ``interrupted``, not a crash.
_STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP")

_SIGNAL_HINTS = {
    "SIGKILL": "killed from outside: most often the kernel's out-of-memory killer",
    "SIGSEGV": "a crash in native code (the backend's runtime or an extension)",
    "SIGBUS": "a crash in native code (bad memory access)",
    "SIGILL": "the runtime used a CPU instruction this machine does not have",
    "SIGABRT": "the runtime aborted (a failed assertion or an uncaught C++ exception)",
    "SIGFPE": "a crash in native code (arithmetic fault)",
}


class _Worker:
    """A run process and the parent's ends of its pipes: jobs go in, stages and records come out.

    A fresh worker gets one job and its ``jobs`` pipe is closed after the record (it exits
    then); a reused one (``launcher.reuse_worker=true``) stays for the next job of the
    sweep, so the interpreter start, the imports and the plugin discovery are paid once.
    """

    def __init__(self, memory_limit_mb: int | None, tty: bool, name: str, reused: bool) -> None:
        self.memory_limit_mb, self.tty, self.reused = memory_limit_mb, tty, reused
        self.jobs_done = 0
        ctx = multiprocessing.get_context("spawn")
        self.result_r, result_w = ctx.Pipe(duplex=False)
        self.err_r, err_w = ctx.Pipe(duplex=False)
        go_r, self.go_w = ctx.Pipe(duplex=False)  # the parent's "go" once it holds the host lock
        jobs_r, self.jobs_w = ctx.Pipe(duplex=False)
        self.process = ctx.Process(
            target=_child_main,
            args=(memory_limit_mb, result_w, err_w, go_r, jobs_r, os.getpid(), tty, stages.clock()),
            name=name,
            daemon=False,
        )
        try:
            _start(self.process)
        finally:
            for end in (result_w, err_w, go_r, jobs_r):
                end.close()
        self.err_fd = self.err_r.fileno()
        os.set_blocking(self.err_fd, False)

    def fits(self, options: LauncherOptions, tty: bool) -> bool:
        """Whether this reused worker can run a job with ``options`` (its rlimit is set once)."""
        return self.process.is_alive() and self.memory_limit_mb == options.memory_limit_mb and self.tty == tty

    def close(self, grace_s: float = _EXIT_GRACE_S) -> None:
        """No more jobs: let it exit, kill what is left of its group, reap it."""
        with contextlib.suppress(OSError):
            self.jobs_w.close()
        if self.process.pid is not None and not wait([self.process.sentinel], timeout=grace_s):
            _kill_group(self.process)  # it hangs on the way out
        _kill_group(self.process)  # helpers the run left behind (the child is exited but unreaped)
        self.process.join()

    def release(self) -> None:
        for end in (self.result_r, self.err_r, self.go_w):
            with contextlib.suppress(OSError):
                end.close()


#: The reused worker of this process's sweep (``launcher.reuse_worker=true``), if one is up.
_reused: _Worker | None = None


@atexit.register
def close_reused_worker() -> None:
    """End the reused worker (the sweep is over, or the CLI exits)."""
    global _reused
    if _reused is not None:
        worker, _reused = _reused, None
        worker.close(grace_s=5.0)
        worker.release()


def _worker_for(spec: RunSpec, options: LauncherOptions, tty: bool) -> _Worker:
    """A fresh run process, or the sweep's reused one when the options ask and it fits."""
    global _reused
    if not options.reuse_worker:
        return _Worker(options.memory_limit_mb, tty, f"harness-run-{spec.backend_name}", reused=False)
    if _reused is not None and not _reused.fits(options, tty):
        close_reused_worker()
    if _reused is None:
        _reused = _Worker(options.memory_limit_mb, tty, "harness-worker", reused=True)
    return _reused


def _run_in_child(
    spec: RunSpec, plugins: Plugins, options: LauncherOptions, status: Callable[[str], None], gate: _LockGate, record: dict[str, Any]
) -> dict[str, Any]:
    global _reused
    # The child's stage clock starts at this moment (``spawn``; ``dispatch`` for a reused
    # worker) and comes back with its record; until then the parent charges nothing, so a
    # run that never reports is all ``run_process``.
    clock = stages.active()
    if clock is not None:
        clock.switch("run_process")
    started = stages.clock()
    tty = bool(getattr(sys.stderr, "isatty", lambda: False)())
    info: dict[str, Any] = {"isolation": "process", "timeout_s": options.timeout_s, "memory_limit_mb": options.memory_limit_mb}
    record["launcher"] = info
    worker: _Worker | None = None
    try:
        worker = _worker_for(spec, options, tty)
        if worker.reused:  # before the job leaves: the run reads it (its peak RSS spans the worker's jobs)
            worker.jobs_done += 1
            info["reuse_worker"] = True
            info["worker_job"] = worker.jobs_done  # 1: this worker's first job (it paid the start-up)
        worker.jobs_w.send((spec, record, started))
    except Exception as exc:  # e.g. a plugin's options type that cannot be pickled
        record["reason"] = (
            f"could not start the run process: {type(exc).__name__}: {' '.join(str(exc).split())[:300]} "
            "(fix: launcher.isolation=inline, or define the plugin's options type at module level)"
        )
        if worker is _reused:
            close_reused_worker()
        elif worker is not None:
            worker.close(grace_s=5.0)
            worker.release()
        return record
    process = worker.process
    info["pid"] = process.pid

    tail = _StderrTail()
    err_fd = worker.err_fd
    result_r = worker.result_r
    watched: list[Any] = [result_r, process.sentinel, err_fd]
    deadline = None if options.timeout_s is None else started + options.timeout_s
    returned: dict[str, Any] | None = None
    crash: dict[str, Any] | None = None
    last_stage = "starting"
    timed_out = False
    interrupted: KeyboardInterrupt | None = None
    keep = False
    try:
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready = wait(watched, timeout=remaining)
            if not ready:
                timed_out = True
                break
            if err_fd in ready and not _read_available(err_fd, tail):
                watched.remove(err_fd)
            if result_r in ready or process.sentinel in ready:
                messages, closed = _messages(result_r)
                if closed and result_r in watched:
                    watched.remove(result_r)
                for kind, payload in messages:
                    if kind == "stage":
                        last_stage = payload
                    elif kind == "ready":  # probed and available: lock the host, then let it build
                        gate.acquire()
                        if deadline is not None:
                            deadline += gate.waited_s  # waiting for the lock is not run time
                        worker.go_w.send("go")
                    elif kind == "stages":  # the child's timeline, merged into ours
                        if clock is not None:
                            clock.absorb(payload["durations"], payload["until"], then="exit")
                    elif kind == "record":
                        returned = payload
                    else:
                        crash = payload
            if returned is not None or crash is not None or process.sentinel in ready:
                break
        keep = worker.reused and returned is not None and crash is None and not timed_out
        if timed_out:
            _dump_stacks(process, err_fd, tail)
            _kill_group(process)
        if not keep:
            worker.close()
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: never leave a run behind, record it
        _kill_group(process)
        process.join()
        interrupted = exc
    except BaseException:  # anything else stopping the sweep: never leave a run behind
        _kill_group(process)
        process.join()
        raise
    finally:
        if keep and interrupted is None:
            os.set_blocking(err_fd, False)
        else:
            _drain(err_fd, tail)
            worker.release()
            if worker is _reused:
                _reused = None

    info["exitcode"] = process.exitcode
    info["wall_s"] = round(time.monotonic() - started - gate.waited_s, 3)
    if returned is not None and interrupted is None:
        returned["launcher"] = {**info, **returned.get("launcher", {})}
        return returned

    record.setdefault("error", {})["stderr_tail"] = tail.lines()
    where = f" during: {last_stage}"
    if interrupted is not None:
        _mark_interrupted(record, interrupted, last_stage)
        interrupted.record = record  # type: ignore[attr-defined]
        raise interrupted
    if timed_out:
        record["status"] = "timeout"
        record["reason"] = (
            f"run exceeded launcher.timeout_s={options.timeout_s:g} s and was killed{where} "
            "(fix: raise launcher.timeout_s, or see error.stderr_tail in the record for the stack where it hung)"
        )
    elif crash is not None:
        record["reason"] = crash["reason"]
        record["error"]["traceback"] = crash.get("traceback", [])
    elif process.exitcode is not None and process.exitcode < 0:
        name, description = _signal_name(-process.exitcode)
        hint = _SIGNAL_HINTS.get(name, "the run process was killed")
        info["signal"] = name
        if name in _STOP_SIGNALS:  # a scheduler or a user stopped the run process itself
            record["status"] = "interrupted"
            record["error"]["type"] = "Interrupted"
            record["reason"] = f"run process was stopped by {name} from outside{where} (fix: run the same command again; a -m sweep skips the jobs already ok)"
            return record
        record["reason"] = (
            f"run process died from {name} ({description}){where}: {hint} "
            "(fix: see error.stderr_tail in the record; launcher.isolation=inline runs it in-process for a debugger)"
        )
    else:
        record["reason"] = (
            f"run process exited with code {process.exitcode} without returning a record{where} "
            "(fix: see error.stderr_tail in the record; a plugin may have called exit())"
        )
    return record


def _start(process: multiprocessing.process.BaseProcess) -> None:
    """``process.start()``, even inside a joblib (loky) worker.

    A loky worker's global start method is ``loky``, which spawn copies into the
    child's preparation data and a plain interpreter cannot resolve; for the
    duration of the start the global method is a standard one, then restored.
    """
    method = multiprocessing.get_start_method(allow_none=True)
    if method is None or method in multiprocessing.get_all_start_methods():
        process.start()
        return
    multiprocessing.set_start_method("spawn", force=True)
    try:
        process.start()
    finally:
        multiprocessing.set_start_method(method, force=True)


def _messages(conn: Connection) -> tuple[list[tuple[str, Any]], bool]:
    """Every message the child has sent so far, and whether its end is closed.

    The child may send stage messages, then its record, then exit, all before we wake.
    """
    received = []
    try:
        while conn.poll(0):
            received.append(conn.recv())
    except (EOFError, OSError):
        return received, True
    return received, False


def _dump_stacks(process: multiprocessing.process.BaseProcess, err_fd: int, tail: _StderrTail) -> None:
    """Ask the hung child's faulthandler for every thread's stack, collected into the tail."""
    if process.pid is None:
        return
    try:
        os.kill(process.pid, signal.SIGUSR1)
    except ProcessLookupError:
        return
    until = time.monotonic() + _DUMP_GRACE_S
    received = False
    while (left := until - time.monotonic()) > 0:
        # once the dump has started, a short quiet spell means it is complete
        if not wait([err_fd], timeout=min(left, 0.3) if received else left):
            return
        if not _read_available(err_fd, tail):
            return
        received = True


# --- child side ----------------------------------------------------------------------------


def _die_with_parent(parent_pid: int) -> None:
    """Linux: have the kernel SIGKILL this process when the parent dies (no orphan runs)."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            return
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def plain(value: Any) -> Any:
    """``value`` with every ``str`` subclass turned into a plain ``str``, recursively.

    The record crosses to the CLI by pickle, and a pickled ``torch.__version__`` (a
    ``TorchVersion``) makes the CLI import torch to read it back: seconds of the run's
    wall time (the ``exit`` stage) and the very import the CLI keeps to the run process.
    """
    if isinstance(value, dict):
        return {plain(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, str) and type(value) is not str:
        return str.__str__(value)
    return value


def _child_progress(label: str, count: int, elapsed_s: float) -> None:
    sys.stderr.write(f"\r  {label}: {count} calls, {elapsed_s:.1f} s ")
    sys.stderr.flush()


def _child_main(
    memory_limit_mb: int | None, result: Connection, err: Connection, go: Connection, jobs: Connection, parent_pid: int, tty: bool, spawned_at: float
) -> None:
    """Entry point of the run process: execute each job the parent sends, send back its record.

    A job is ``(spec, record, sent_at)``; the process runs jobs until the parent closes
    the ``jobs`` pipe (after one job, unless the worker is reused), then ends at once:
    the record is sent and the run's work folder is gone, so the interpreter's teardown
    (seconds with torch loaded) would only delay the next job.

    Once the backend probed available, the child says ``ready`` and waits for the
    parent's ``go``: the parent takes the host lock in between. ``spawned_at`` is the
    parent's monotonic time when it began starting this process: the first job's stage
    clock starts there (``spawn``, ``imports``), a later job's when the parent sent it
    (``dispatch``); the stages go back to the parent before each record.
    """
    clock: stages.StageClock | None = stages.start("spawn", at=spawned_at)
    clock.switch("imports")  # type: ignore[union-attr]
    finished = False
    try:
        os.setpgid(0, 0)  # our own group: a timeout kills us and our helpers, not the CLI
    except OSError:
        pass
    _die_with_parent(parent_pid)
    os.dup2(err.fileno(), 2)
    err.close()
    if tty:
        os.environ.setdefault("FORCE_COLOR", "1")  # the parent's terminal shows our colours
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    faulthandler.enable(all_threads=True)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    if memory_limit_mb:
        limit = memory_limit_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        from harness import ui
        from harness.plugins import load_plugins

        def stage(message: str) -> None:
            ui.stage(message)
            result.send(("stage", message))

        def wait_for_lock() -> None:
            result.send(("ready", None))
            try:
                go.recv()
            except EOFError:  # the parent is gone (it kills us on any other path)
                os._exit(1)

        loaded = load_plugins()
        while True:
            try:
                spec, record, sent_at = jobs.recv()
            except EOFError:  # no more jobs
                finished = True
                break
            if clock is None:  # a later job of a reused worker
                clock = stages.start("dispatch", at=sent_at)
            clock.switch("run")
            record = execute(
                spec,
                loaded,
                status=stage,
                progress=_child_progress if tty else None,
                on_stage=lambda message: result.send(("stage", message)),
                after_probe=wait_for_lock,
                record=record,
            )
            if tty:
                sys.stderr.write("\r\033[K")
            result.send(("stages", {"durations": clock.snapshot(), "until": clock.until}))
            result.send(("record", plain(record)))
            clock = None
            stages.stop()
    except BaseException as exc:  # the runner catches run errors; this is bootstrap failing
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
        result.send(("crash", {"reason": f"run process failed before a record: {reason}", "traceback": traceback.format_exc().splitlines()[-30:]}))
    finally:
        result.close()
        sys.stderr.flush()
    if finished:
        sys.stdout.flush()
        os._exit(0)
