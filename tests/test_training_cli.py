"""The training scenarios through the real ``harness`` entry point, as a user runs them."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import records_in, run_cli

from harness import records

pytestmark = pytest.mark.slow

#: bert_tiny on a small slice of the embedded task: a few seconds of training.
TINY = [
    "model=bert_tiny",
    "dataset.train_size=512",
    "dataset.eval_size=128",
    "scenario.epochs=1",
    "scenario.eval_interval=8",
    "scenario.warmup_steps_excluded=2",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One 1-process bert_train run (also the DDP test's scaling baseline)."""
    cwd = tmp_path_factory.mktemp("train")
    proc = run_cli("+scenario=bert_train", "backend=pytorch", *TINY, cwd=cwd, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (rec,) = records_in(cwd / "results")
    return cwd, rec


def test_bert_train_writes_an_ok_record_with_curves(trained):
    _, rec = trained
    records.validate(rec)
    assert rec["status"] == "ok" and rec["scenario"]["kind"] == "training"
    assert rec["scenario"]["batch_size"] == 32 and rec["scenario"]["seq_len"] == 32
    training = rec["metrics"]["training"]
    assert training["world_size"] == 1 and training["steps"] == 16  # 512 // 32
    assert training["samples_per_s"] > 0 and training["tokens_per_s"] == pytest.approx(training["samples_per_s"] * 32)
    assert training["step_latency_ms"]["count"] == 14  # 2 warm-up steps left out
    assert [p[0] for p in training["loss_curve"]] == [10, 16]
    assert [p[0] for p in training["eval_curve"]] == [8, 16]
    assert training["final_accuracy"] == training["eval_curve"][-1][1]
    assert training["time_to_target_s"] is not None or "never reached" in training["time_to_target_reason"]
    assert training["scaling_efficiency"] is None and "single-process" in training["scaling_reason"]
    assert training["memory_mib"]["peak_rss_mib"] > 0
    assert rec["metrics"]["accuracy"]["value"] == training["final_accuracy"]
    assert rec["metrics"]["throughput"]["samples_per_s"] == training["samples_per_s"]


def test_bert_train_writes_tensorboard_and_a_checkpoint(trained):
    cwd, rec = trained
    training = rec["metrics"]["training"]
    board = Path(training["tensorboard"])
    assert board.parent == (cwd / "results" / "tensorboard").resolve()
    assert list(board.glob("events.out.tfevents.*"))
    folder = Path(training["checkpoint"])
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in folder.iterdir()}


def test_ddp_two_processes_write_one_record_with_scaling(trained):
    cwd, single = trained
    proc = run_cli("+scenario=bert_train", "backend=pytorch", *TINY, "scenario.distributed.nproc_per_node=2", cwd=cwd, timeout=300)
    assert proc.returncode == 0, proc.stderr
    recs = [r for r in records_in(cwd / "results") if r["run_id"] != single["run_id"]]
    assert len(recs) == 1
    training = recs[0]["metrics"]["training"]
    assert recs[0]["status"] == "ok" and training["world_size"] == 2
    assert training["samples_per_step"] == 64 and training["steps"] == 8  # 512 // (32 x 2)
    assert training["scaling_baseline"]["run_id"] == single["run_id"]
    assert training["scaling_efficiency"] == pytest.approx(training["samples_per_s"] / (2 * single["metrics"]["training"]["samples_per_s"]))


def test_ddp_without_a_baseline_says_why(tmp_path):
    proc = run_cli(
        "+scenario=bert_train",
        "backend=pytorch",
        *TINY,
        "scenario.epochs=0",
        "scenario.max_steps=4",
        "scenario.distributed.nproc_per_node=2",
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (rec,) = records_in(tmp_path / "results")
    training = rec["metrics"]["training"]
    assert training["world_size"] == 2 and training["scaling_efficiency"] is None
    assert "nproc_per_node=1" in training["scaling_reason"]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_nodes_train_as_one_world_and_node_0_writes_the_record(tmp_path):
    """Two ``harness`` processes as two nodes of one run on one host: they share the host lock
    (the second joins the first's) instead of waiting for each other."""
    from conftest import run_two_nodes

    common = [
        "+scenario=bert_train",
        "backend=pytorch",
        *TINY,
        "scenario.epochs=0",
        "scenario.max_steps=4",
        "scenario.distributed.nnodes=2",
        f"scenario.distributed.rdzv_endpoint=127.0.0.1:{_free_port()}",
        "scenario.distributed.timeout_s=240",
        f"results_dir={tmp_path / 'results'}",
    ]
    node0, (code1, out1, err1) = run_two_nodes(*common, cwd=tmp_path, timeout=300)
    assert node0.returncode == 0, node0.stderr[-3000:]
    assert code1 == 0, err1[-3000:]
    assert "node 0 of 2" in err1 and "writes the record" in err1 and "record:" not in out1
    assert "joining pid" in err1 + node0.stderr  # whichever node came second joined the other's lock
    (rec,) = records_in(tmp_path / "results")
    assert rec["status"] == "ok" and rec["metrics"]["training"]["world_size"] == 2
    assert rec["metrics"]["training"]["samples_per_step"] == 64  # 32 per rank x 2 nodes
    assert (rec["config"]["scenario"]["distributed"]["nnodes"], rec["config"]["scenario"]["distributed"]["node_rank"]) == (2, 0)


@pytest.mark.parametrize("node_rank", [0, 1])
def test_a_node_whose_peers_never_come_times_out_with_a_record(tmp_path, node_rank):
    proc = run_cli(
        "+scenario=bert_train",
        "backend=pytorch",
        *TINY,
        "scenario.epochs=0",
        "scenario.max_steps=2",
        "scenario.distributed.nnodes=2",
        f"scenario.distributed.node_rank={node_rank}",
        f"scenario.distributed.rdzv_endpoint=127.0.0.1:{_free_port()}",
        "scenario.distributed.timeout_s=10",
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode != 0
    (rec,) = records_in(tmp_path / "results")
    assert rec["status"] == "timeout" and "scenario.distributed.timeout_s=10" in rec["reason"]
    assert "start all 2 nodes with rdzv_endpoint=127.0.0.1:" in rec["reason"]
    assert rec["reason"].startswith("node 1 of 2: ") == (node_rank == 1)  # another node's view says so


def test_a_resolver_error_keeps_its_fix(tmp_path):
    """``+distributed=slurm`` in a job whose id gives no port: the resolver's own one line, with its fix."""
    proc = run_cli(
        "+scenario=bert_train", "+distributed=slurm", cwd=tmp_path, timeout=120, env={"SLURM_JOB_NODELIST": "n1", "MASTER_ADDR": "n1", "SLURM_JOB_ID": "12_3"}
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "not a job number" in errors[0] and "fix: export MASTER_PORT" in errors[0]


def test_onnxruntime_cannot_train(tmp_path):
    proc = run_cli("+scenario=bert_train", "backend=onnxruntime", *TINY, cwd=tmp_path, timeout=120)
    assert proc.returncode == 4
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "unsupported" in errors[0] and "cannot train" in errors[0]
    (rec,) = records_in(tmp_path / "results")
    assert rec["status"] == "unsupported" and "backend=pytorch" in rec["reason"]


def test_bad_training_option_is_one_line(tmp_path):
    proc = run_cli("+scenario=bert_train", "scenario.optimizer=lamb", cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "scenario.optimizer" in errors[0] and "Traceback" not in proc.stderr


def test_resnet_train_runs_on_digits(tmp_path):
    proc = run_cli(
        "+scenario=resnet_train",
        "backend=pytorch",
        "scenario.epochs=0",
        "scenario.max_steps=6",
        "scenario.eval_interval=0",
        "scenario.warmup_steps_excluded=1",
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (rec,) = records_in(tmp_path / "results")
    assert rec["status"] == "ok" and rec["model"]["name"] == "resnet_small" and rec["config"]["dataset"]["name"] == "digits"
    assert rec["scenario"]["seq_len"] is None and rec["metrics"]["training"]["tokens_per_s"] is None


def test_bert_train_on_a_local_csv(tmp_path):
    import pandas as pd

    words = ["the movie was good .", "the plot was bad .", "the cast was not bad .", "the film was not good ."]
    rows = [{"review": words[i % 4], "mood": ["pos", "neg", "pos", "neg"][i % 4]} for i in range(80)]
    pd.DataFrame(rows).to_csv(tmp_path / "reviews.csv", index=False)
    proc = run_cli(
        "+scenario=bert_train",
        "backend=pytorch",
        "model=bert_tiny",
        "dataset=files",
        f"dataset.path={tmp_path / 'reviews.csv'}",
        "dataset.text_column=review",
        "dataset.label_column=mood",
        "scenario.batch_size=8",
        "scenario.max_steps=4",
        "scenario.warmup_steps_excluded=1",
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (rec,) = records_in(tmp_path / "results")
    assert rec["status"] == "ok" and rec["config"]["dataset"]["kind"] == "files"
    assert rec["metrics"]["training"]["steps"] == 4 and len(rec["metrics"]["training"]["eval_curve"]) == 1
