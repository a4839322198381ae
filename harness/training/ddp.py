"""Data-parallel launch: ``torchrun`` as a child process, one result back from rank 0.

The parent (the ``harness`` run) writes the job as JSON into a temp folder, starts
``python -m torch.distributed.run ... -m harness.training.ddp_worker job.json`` and
streams the workers' progress lines through its own status output. Rank 0 writes
``result.json``; a failing rank writes ``error-<rank>.json`` with its status and
one-line reason, which the parent raises as the run's own, so a DDP run ends as one
record like any other.

Across nodes each node's ``harness`` launches its own torchrun with a *static*
rendezvous (``--node_rank``, node 0 hosting the store at ``rdzv_endpoint``): global
rank 0 is then local rank 0 of node 0, so the node that gets ``result.json`` is known
before the run starts. The other nodes' launches end with no result, which is success.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections import deque
from pathlib import Path
from typing import Any, Callable

from harness.errors import EXIT_CODES, HarnessError
from harness.training.options import DistributedOptions


#: Lines torch.profiler's kineto prints on every start/stop (``USDT:... profiler_start``):
#: the profiled warm-up steps would otherwise flood the run's status output.
PROFILER_NOISE = re.compile(r"^\s*(USDT|STAGE):\d{4}-\d\d-\d\d ")


class LaunchTimeout(HarnessError):
    """The torchrun launch ran past ``scenario.distributed.timeout_s``."""

    status = "timeout"
    exit_code = EXIT_CODES["timeout"]


def torchrun_command(job_path: Path, dist: DistributedOptions) -> list[str]:
    """The torchrun command line for ``dist``: ``--standalone`` on one node (a free local
    port, whatever ``rdzv_endpoint`` says), else a static rendezvous in which this node's
    rank is ``node_rank``. Its join timeout follows ``timeout_s`` (torchrun's own is 600 s),
    so nodes that start late are waited for as long as the launch may take."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={dist.nproc_per_node}"]
    if dist.nnodes == 1:
        command.append("--standalone")
    else:
        command += [
            f"--nnodes={dist.nnodes}",
            f"--node_rank={dist.node_rank}",
            "--rdzv_backend=static",
            f"--rdzv_endpoint={dist.rdzv_endpoint}",
            f"--rdzv_conf=timeout={math.ceil(dist.timeout_s) + 30}",
        ]
    return command + ["-m", "harness.training.ddp_worker", str(job_path)]


def worker_env(dist: DistributedOptions) -> dict[str, str]:
    """The parent's environment, with CPU threads split across the local processes.

    torchrun would otherwise set ``OMP_NUM_THREADS=1`` with a warning; an explicit
    share of the cores per process is the same intent without the noise.
    """
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // dist.nproc_per_node))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    return env


def _raise_worker_error(folder: Path, returncode: int, tail: list[str]) -> None:
    errors = sorted(folder.glob("error-*.json"))
    if errors:
        info = json.loads(errors[0].read_text())
        exc = HarnessError(info["reason"])
        exc.status = info.get("status", "failed")
        exc.exit_code = EXIT_CODES.get(exc.status, 1)
        raise exc
    last = " | ".join(line.strip() for line in tail[-3:] if line.strip())
    raise HarnessError(
        f"torchrun exited with code {returncode} and no result: {last}"[:500], "rerun with scenario.distributed.nproc_per_node=1 to see the error in-process"
    )


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the harness process dies (Linux), so no orphans.

    torchrun stays in the harness's process group, so a harness launcher that kills
    its run's group on timeout stops the agent and its workers too.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def launch(job: dict[str, Any], dist: DistributedOptions, status: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Run ``job`` on ``dist.nproc_per_node`` local processes; return rank 0's result,
    or None on a node other than node 0 once its ranks finished without error."""
    with tempfile.TemporaryDirectory(prefix="harness-ddp-") as tmp:
        folder = Path(tmp)
        job_path = folder / "job.json"
        job_path.write_text(json.dumps({**job, "result_dir": str(folder)}, default=str))
        command = torchrun_command(job_path, dist)
        where = f" (node {dist.node_rank}, rendezvous at {dist.rdzv_endpoint})" if dist.nnodes > 1 else ""
        status(f"launching torchrun: {dist.nproc_per_node} process(es) per node x {dist.nnodes} node(s){where}")
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=worker_env(dist), preexec_fn=_die_with_parent)
        tail: deque[str] = deque(maxlen=40)

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                tail.append(line)
                if line.strip() and not PROFILER_NOISE.match(line):
                    status(line.rstrip())

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            returncode = proc.wait(timeout=dist.timeout_s)
        except subprocess.TimeoutExpired:
            proc.terminate()  # the torchrun agent stops its workers on SIGTERM
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            if dist.nnodes > 1:
                fix = f"start all {dist.nnodes} nodes with rdzv_endpoint={dist.rdzv_endpoint} (node 0 listens there), or raise scenario.distributed.timeout_s"
            else:
                fix = "raise scenario.distributed.timeout_s or train for fewer steps"
            raise LaunchTimeout(f"torchrun ran past scenario.distributed.timeout_s={dist.timeout_s:g}", fix) from None
        reader.join(timeout=5)
        result_path = folder / "result.json"
        if returncode == 0 and dist.node_rank > 0 and not any(folder.glob("error-*.json")):
            return None  # rank 0 lives on node 0, which writes the result
        if returncode != 0 or not result_path.is_file():
            _raise_worker_error(folder, returncode, list(tail))
        return json.loads(result_path.read_text())
