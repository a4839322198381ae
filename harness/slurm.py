"""Where a multi-node training run meets inside a Slurm job.

``conf/distributed/slurm.yaml`` (``+distributed=slurm``) sets ``nnodes`` and ``node_rank``
from the job's task count and task id (one ``harness`` task per node) and the rendezvous
endpoint from :func:`rendezvous_endpoint`, resolved in each task when the job runs. Every
task of the job computes the same answer from the job's own environment, so nothing has
to be exported by hand before ``srun``.
"""

from __future__ import annotations

import os
import subprocess
from typing import Mapping

from harness.errors import ConfigError

#: Ports 20000-39999: above the usual service ports, below Linux's ephemeral range (32768+ on
#: some kernels overlaps; a clash shows as a rendezvous error naming the port).
PORT_BASE = 20000
PORT_SPAN = 20000
#: torchrun's own default port, for the one-node world outside a Slurm job.
OUTSIDE_SLURM_PORT = 29500


def head_node(nodelist: str) -> str:
    """The first host of a Slurm node list (``node[01-04]`` -> ``node01``), via ``scontrol``."""
    try:
        proc = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30, check=False)
    except FileNotFoundError:
        raise ConfigError("scontrol is not on PATH, so the Slurm node list cannot be expanded", "export MASTER_ADDR=<node 0's host name> before srun") from None
    hosts = proc.stdout.split()
    if proc.returncode != 0 or not hosts:
        raise ConfigError(
            f"scontrol show hostnames {nodelist!r} failed: {proc.stderr.strip() or 'no hosts'}", "export MASTER_ADDR=<node 0's host name> before srun"
        )
    return hosts[0]


def rendezvous_endpoint(env: Mapping[str, str] | None = None) -> str:
    """``host:port`` of node 0 for this Slurm job.

    ``MASTER_ADDR``/``MASTER_PORT`` win when set (the PyTorch convention); else the host is
    the first node of ``SLURM_JOB_NODELIST`` and the port is derived from ``SLURM_JOB_ID``,
    so two jobs sharing a node do not pick the same port. Outside a job (the submitting
    machine resolving the config before ``sbatch``, or a plain run) it is this machine.
    """
    env = os.environ if env is None else env
    job_id = env.get("SLURM_JOB_ID", "")
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:  # not in a job (the submitting machine checks the config): a one-node world here
        return f"{env.get('MASTER_ADDR') or 'localhost'}:{env.get('MASTER_PORT') or OUTSIDE_SLURM_PORT}"
    host = env.get("MASTER_ADDR") or head_node(nodelist)
    port = env.get("MASTER_PORT")
    if not port:
        if not job_id.isdigit():
            raise ConfigError(
                f"SLURM_JOB_ID={job_id!r} is not a job number, so no rendezvous port follows from it", "export MASTER_PORT=<a free port> before srun"
            )
        port = str(PORT_BASE + int(job_id) % PORT_SPAN)
    return f"{host}:{port}"
