"""Sweeps on a real Slurm cluster through Hydra's submitit launcher.

CI starts a private single-node cluster (``scripts/slurm/start-local-slurm.sh``) and
sets ``HARNESS_SLURM=1``; without it the ``slurm`` tests skip, saying how to start one.
Both sweep jobs ask for one CPU, so on the single node Slurm runs them side by side:
the two-jobs-on-one-node case the host lock (``harness.hostlock``) must serialise.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.hostlock import windows_overlap
from conftest import BIN, FAST, records_in, run_cli

NO_CLUSTER = 'no Slurm cluster: run `eval "$(sudo scripts/slurm/start-local-slurm.sh)"` and export HARNESS_SLURM=1 (CI does both)'
NO_LAUNCHER = "hydra-submitit-launcher is not installed (fix: pip install -e '.[slurm]')"


def _launcher_installed() -> bool:
    return importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None


@dataclass(frozen=True)
class Cluster:
    partition: str
    nodes: frozenset[str]


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    """The running cluster; a test failure (not a skip) when HARNESS_SLURM=1 promises one that is not there."""
    if os.environ.get("HARNESS_SLURM") != "1":
        pytest.skip(NO_CLUSTER)
    if shutil.which("sinfo") is None:
        pytest.fail("HARNESS_SLURM=1 but sinfo is not on PATH (fix: apt-get install -y slurm-wlm munge)")
    if not _launcher_installed():
        pytest.fail(f"HARNESS_SLURM=1 but {NO_LAUNCHER}")
    info = subprocess.run(["sinfo", "-h", "-N", "-o", "%P %t %N"], capture_output=True, text=True, timeout=30)
    if info.returncode != 0:
        pytest.fail(f"HARNESS_SLURM=1 but sinfo failed: {info.stderr.strip()} (is SLURM_CONF exported?)")
    rows = [line.split() for line in info.stdout.splitlines() if line.strip()]
    usable = [r for r in rows if r[1].rstrip("*~#") in ("idle", "mix", "alloc")]
    if not usable:
        pytest.fail(f"HARNESS_SLURM=1 but no node is up: {info.stdout.strip() or 'sinfo shows nothing'}")
    default = next((r[0] for r in rows if r[0].endswith("*")), rows[0][0]).rstrip("*")
    partition = os.environ.get("HARNESS_SLURM_PARTITION", default)
    return Cluster(partition, frozenset(r[2] for r in usable))


def _launcher_overrides(cluster: Cluster) -> list[str]:
    # Small enough for a 2-core CI machine: each job gets one CPU, so both fit at once.
    return [
        f"hydra.launcher.partition={cluster.partition}",
        "hydra.launcher.timeout_min=15",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=2",
    ]


@pytest.fixture(scope="module")
def sweep(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    """The acceptance sweep, run once for the tests below: 2 backends, 2 Slurm jobs."""
    root = tmp_path_factory.mktemp("slurm-sweep")
    results = root / "results"
    proc = run_cli(
        "-m",
        "hydra/launcher=submitit_slurm",
        "backend=onnxruntime,pytorch",
        "+scenario=bert_fp32",
        *FAST,
        *_launcher_overrides(cluster),
        f"results_dir={results}",
        cwd=root,
        env={"HARNESS_LOCK_DIR": str(root / "locks")},
        timeout=1200,
    )
    return proc, results


@pytest.mark.slurm
def test_sweep_through_submitit_slurm_writes_two_ok_records(cluster: Cluster, sweep: tuple) -> None:
    proc, results = sweep
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    recs = records_in(results)
    assert sorted(r["backend"]["name"] for r in recs) == ["onnxruntime", "pytorch"]
    assert [r["status"] for r in recs] == ["ok", "ok"], [r["reason"] for r in recs]
    for record in recs:
        assert record["hardware"]["hostname"].split(".")[0] in cluster.nodes
        assert record["hardware"]["fingerprint"]
    # The jobs ran as Slurm jobs: submitit kept each job's script and log beside the records.
    assert list(results.glob(".multirun/*/.submitit/*/*_submission.sh"))
    assert len(list(results.glob(".multirun/*/.submitit/*_*/*_log.out"))) == 2


@pytest.mark.slurm
def test_two_jobs_on_one_node_never_overlap_their_measurements(sweep: tuple) -> None:
    _, results = sweep
    recs = records_in(results)
    assert len(recs) == 2
    missing = [r["backend"]["name"] for r in recs if "host_lock" not in r]
    assert not missing, (
        f"records of {missing} carry no host_lock section (fix: run harness.launcher.launch inside harness.hostlock.measurement_lock, see docs/fleet.md)"
    )
    for record in recs:
        lock = record["host_lock"]
        assert lock["enabled"] and lock["owner"].get("slurm_job_id"), lock
        window = record["metrics"]["window"]
        assert lock["acquired_at"] <= window["start"] <= window["end"] <= lock["released_at"]
    by_host: dict[str, list[dict]] = {}
    for record in recs:
        by_host.setdefault(record["host_lock"]["host"], []).append(record)
    for host, group in by_host.items():
        measured = [(r["metrics"]["window"]["start"], r["metrics"]["window"]["end"]) for r in group]
        held = [(r["host_lock"]["acquired_at"], r["host_lock"]["released_at"]) for r in group]
        assert windows_overlap(measured) == [], f"measurement windows overlap on {host}"
        assert windows_overlap(held) == [], f"host lock windows overlap on {host}"


@pytest.mark.slurm
def test_report_over_the_sweep_compares_the_records(sweep: tuple, tmp_path: Path) -> None:
    _, results = sweep
    proc = run_cli(str(results), "--out", str(tmp_path / "report"), cwd=tmp_path, command="harness-report")
    assert proc.returncode == 0, proc.stderr[-3000:]
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "onnxruntime" in markdown and "pytorch" in markdown


@pytest.mark.slurm
def test_srun_runs_a_single_harness_job(cluster: Cluster, tmp_path: Path) -> None:
    """The plain ``srun harness ...`` path (batch scripts, multi-node training) needs no launcher."""
    results = tmp_path / "results"
    command = [
        "srun",
        "-N1",
        "-n1",
        "-c1",
        f"--partition={cluster.partition}",
        "--time=15",
        str(BIN / "harness"),
        "+scenario=bert_fp32",
        "backend=onnxruntime",
        *FAST,
        f"results_dir={results}",
    ]
    env = {**os.environ, "HARNESS_LOCK_DIR": str(tmp_path / "locks")}
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (record,) = records_in(results)
    assert record["status"] == "ok" and record["hardware"]["hostname"].split(".")[0] in cluster.nodes


TINY_TRAINING = [
    "+scenario=bert_train",
    "backend=pytorch",
    "model=bert_tiny",
    "scenario.max_steps=8",
    "scenario.eval_interval=0",
    "scenario.log_interval=2",
    "scenario.warmup_steps_excluded=2",
    "scenario.target_accuracy=null",
    "scenario.batch_size=16",
]


@pytest.mark.slurm
def test_multi_node_training_through_harness_slurm_takes_its_rendezvous_from_the_job(cluster: Cluster, tmp_path: Path) -> None:
    """Hydra's submitit launcher with 2 tasks (as 2 nodes, one harness each) and ``+distributed=slurm``."""
    results = tmp_path / "results"
    proc = run_cli(
        "-m",
        "hydra/launcher=harness_slurm",
        f"hydra.launcher.partition={cluster.partition}",
        "hydra.launcher.tasks_per_node=2",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=2",
        "hydra.launcher.timeout_min=15",
        *TINY_TRAINING,
        "+distributed=slurm",
        f"results_dir={results}",
        cwd=tmp_path,
        env={"HARNESS_LOCK_DIR": str(tmp_path / "locks")},
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (record,) = records_in(results)
    assert record["status"] == "ok", record["reason"]
    assert record["metrics"]["training"]["world_size"] == 2
    dist = record["config"]["scenario"]["distributed"]
    host, port = dist["rdzv_endpoint"].rsplit(":", 1)
    assert (dist["nnodes"], dist["node_rank"]) == (2, 0)
    assert host in cluster.nodes and 20000 <= int(port) < 40000  # node 0 of the job, port from the job id
    assert "1 job: 1 ok" in proc.stdout + proc.stderr  # node 1 finished without a second outcome
    script = next(results.glob(".multirun/*/.submitit/*/*_submission.sh")).read_text()
    assert "#SBATCH --exclusive" in script and "#SBATCH --ntasks-per-node=2" in script


@pytest.mark.slurm
def test_multi_node_training_under_srun_writes_one_record_from_node_0(cluster: Cluster, tmp_path: Path) -> None:
    """``srun -n2 harness ... +distributed=slurm``: two tasks as two nodes of one world.

    The CI cluster has one node, so both "nodes" share a host and its lock: the second
    joins the first's lock (it would otherwise wait for a holder that waits for it).
    """
    results = tmp_path / "results"
    command = [
        "srun",
        "-N1",
        "-n2",
        "-c1",
        f"--partition={cluster.partition}",
        "--time=15",
        "--label",
        str(BIN / "harness"),
        *TINY_TRAINING,
        "+distributed=slurm",
        f"results_dir={results}",
        "scenario.distributed.timeout_s=600",
    ]
    env = {**os.environ, "HARNESS_LOCK_DIR": str(tmp_path / "locks")}
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (record,) = records_in(results)
    assert record["status"] == "ok", record["reason"]
    assert record["metrics"]["training"]["world_size"] == 2
    dist = record["config"]["scenario"]["distributed"]
    assert (dist["nnodes"], dist["node_rank"]) == (2, 0)
    output = proc.stderr + proc.stdout
    assert "1: · done: this node's ranks finished; node 0 of 2" in output and "joining pid" in output


# --- no cluster needed: the launcher presets compose ------------------------------------------


@pytest.mark.skipif(not _launcher_installed(), reason=NO_LAUNCHER)
def test_harness_slurm_preset_extends_submitit_slurm() -> None:
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="harness.conf", version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=["hydra/launcher=harness_slurm", "hydra.launcher.partition=gpu", "hydra.launcher.constraint=h100"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.additional_parameters == {"exclusive": True}
    assert (launcher.partition, launcher.constraint, launcher.stderr_to_stdout) == ("gpu", "h100", True)


@pytest.mark.skipif(
    importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None,
    reason="hydra-ray-launcher is not installed (it needs cloudpickle<3 and python-dateutil<3; see docs/fleet.md)",
)
def test_harness_ray_preset_joins_a_running_cluster() -> None:
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="harness.conf", version_base="1.3"):
        cfg = compose(
            config_name="config",
            overrides=["hydra/launcher=harness_ray", "+hydra.launcher.ray.remote.resources={h100:1}"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("ray_launcher.RayLauncher")
    assert launcher.ray.init.address == "auto" and launcher.ray.init.object_store_memory is None
    assert launcher.ray.remote.resources == {"h100": 1}
