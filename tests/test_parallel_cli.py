"""``scenario.distributed.strategy`` through the real ``harness`` entry point (the acceptance runs).

bert_tiny on a slice of the embedded task, dropout off, 6 steps: the 1-process run with
batch 16 is the reference; fsdp runs 2 replicas of batch 8 (the same 16 examples per
step), tp and pp one replica of batch 16 spread over 2 processes. Each writes one ok
record with world size 2, memory per rank and the loss curve of the 1-process run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import records_in, run_cli

from harness import records

pytestmark = pytest.mark.slow

LOSS_TOL = 1e-4
RUN = [
    "+scenario=bert_train",
    "backend=pytorch",
    "model=bert_tiny",
    "dataset.train_size=256",
    "dataset.eval_size=64",
    "scenario.max_steps=6",
    "scenario.eval_interval=3",
    "scenario.warmup_steps_excluded=3",
    "scenario.dropout=0",
    "scenario.log_interval=1",
]


def one_process_run(tmp_path_factory: pytest.TempPathFactory, name: str, run: list[str]) -> Path:
    """A folder holding the 1-process reference run (batch 16) of ``run``."""
    cwd = tmp_path_factory.mktemp(name)
    proc = run_cli(*run, "scenario.batch_size=16", cwd=cwd, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return cwd


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return one_process_run(tmp_path_factory, "parallel", RUN)


def baseline(folder: Path) -> dict:
    (rec,) = [r for r in records_in(folder / "results") if r["metrics"]["training"]["world_size"] == 1]
    return rec


def weights(record: dict) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(Path(record["metrics"]["training"]["checkpoint"]) / "model.safetensors"))


@pytest.mark.parametrize("strategy, batch", [("fsdp", 8), ("tp", 16), ("pp", 16)])
def test_strategy_writes_one_ok_record_matching_the_single_process_run(folder, strategy, batch):
    before = {r["run_id"] for r in records_in(folder / "results")}
    proc = run_cli(
        *RUN, f"scenario.batch_size={batch}", "scenario.distributed.nproc_per_node=2", f"scenario.distributed.strategy={strategy}", cwd=folder, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    (rec,) = [r for r in records_in(folder / "results") if r["run_id"] not in before]
    single = baseline(folder)["metrics"]["training"]
    training = rec["metrics"]["training"]
    records.validate(rec)
    assert rec["status"] == "ok" and training["world_size"] == 2 and training["strategy"] == strategy
    assert training["samples_per_step"] == 16 and training["data_parallel_size"] == (2 if strategy == "fsdp" else 1)
    np.testing.assert_allclose([p[1] for p in training["loss_curve"]], [p[1] for p in single["loss_curve"]], rtol=0, atol=LOSS_TOL)
    assert [r["rank"] for r in training["memory_per_rank"]] == [0, 1]
    for rank in training["memory_per_rank"]:
        assert rank["params_mib"] > 0 and rank["optimizer_mib"] > 0 and rank["peak_rss_mib"] > 0
        assert rank["communication_ms"] > 0 and rank["compute_ms"] > 0
    assert training["step_breakdown"]["profiled_steps"] == [2, 3]
    assert training["tokens_per_s"] == pytest.approx(training["samples_per_s"] * 32)
    if strategy == "fsdp":  # half the parameters per rank; its batch differs, so no scaling baseline
        assert training["memory_mib"]["params_mib"] == pytest.approx(single["memory_mib"]["params_mib"] / 2, rel=0.02)
        assert training["scaling_efficiency"] is None and "nproc_per_node=1" in training["scaling_reason"]
    else:
        assert training["scaling_baseline"]["run_id"] == baseline(folder)["run_id"]
        assert training["scaling_efficiency"] == pytest.approx(training["samples_per_s"] / (2 * single["samples_per_s"]))
    reference = weights(baseline(folder))
    for name, tensor in weights(rec).items():  # the whole model, gathered on rank 0 and saved
        np.testing.assert_allclose(tensor, reference[name], rtol=0, atol=1e-4, err_msg=name)


def test_a_layer_count_that_does_not_split_into_the_stages_fails_before_launch(tmp_path):
    proc = run_cli(
        *RUN,
        "scenario.distributed.nproc_per_node=3",
        "scenario.distributed.strategy=pp",
        "scenario.distributed.microbatches=3",
        "scenario.batch_size=12",
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 2
    line = proc.stderr.strip().splitlines()[-1]
    assert "2 blocks, which do not split into 3 equal pipeline stages" in line and "fix:" in line
    assert "launching torchrun" not in proc.stderr


def test_a_strategy_without_processes_is_a_config_error(tmp_path):
    proc = run_cli(*RUN, "scenario.distributed.strategy=tp", cwd=tmp_path, timeout=300)
    assert proc.returncode == 2
    assert "nproc_per_node x nnodes is 1" in proc.stderr.strip().splitlines()[-1]


def test_pipeline_stages_on_two_nodes_through_the_static_rendezvous(folder, tmp_path):
    """pp across nodes (its natural home): two ``harness`` processes as nodes 0 and 1 of one
    run, one stage each; node 0 writes the one record, with the 1-process loss curve."""
    import socket

    from conftest import run_two_nodes

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    common = [
        *RUN,
        "scenario.batch_size=16",
        "scenario.distributed.strategy=pp",
        "scenario.distributed.nnodes=2",
        f"scenario.distributed.rdzv_endpoint=127.0.0.1:{port}",
        "scenario.distributed.timeout_s=300",
        f"results_dir={tmp_path / 'results'}",
    ]
    node0, (code1, _, err1) = run_two_nodes(*common, cwd=tmp_path)
    assert node0.returncode == 0, node0.stderr[-3000:]
    assert code1 == 0, err1[-3000:]
    (rec,) = records_in(tmp_path / "results")
    training = rec["metrics"]["training"]
    assert rec["status"] == "ok" and training["world_size"] == 2 and training["mesh"] == {"pp": 2}
    np.testing.assert_allclose(
        [p[1] for p in training["loss_curve"]], [p[1] for p in baseline(folder)["metrics"]["training"]["loss_curve"]], rtol=0, atol=LOSS_TOL
    )


LLM_RUN = [
    "+scenario=llm_train",
    "backend=pytorch",
    "model=llama_tiny",
    "scenario.max_steps=6",
    "scenario.eval_interval=3",
    "scenario.log_interval=1",
    "scenario.warmup_steps_excluded=2",
]


@pytest.fixture(scope="module")
def llm_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return one_process_run(tmp_path_factory, "parallel-llm", LLM_RUN)


@pytest.mark.parametrize("strategy, batch", [("fsdp", 8), ("tp", 16), ("pp", 16)])
def test_llm_pretraining_strategy_matches_the_single_process_run(llm_folder, strategy, batch):
    """The issue's acceptance: ``+scenario=llm_train`` on llama_tiny with 2 processes writes
    one ok record per strategy, its next-token loss and eval perplexity those of the
    1-process run; FSDP holds half the parameters per rank."""
    before = {r["run_id"] for r in records_in(llm_folder / "results")}
    proc = run_cli(
        *LLM_RUN,
        f"scenario.batch_size={batch}",
        "scenario.distributed.nproc_per_node=2",
        f"scenario.distributed.strategy={strategy}",
        cwd=llm_folder,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    (rec,) = [r for r in records_in(llm_folder / "results") if r["run_id"] not in before]
    (one,) = [r for r in records_in(llm_folder / "results") if r["metrics"]["training"]["world_size"] == 1]
    single, training = one["metrics"]["training"], rec["metrics"]["training"]
    records.validate(rec)
    assert rec["status"] == "ok" and training["world_size"] == 2 and training["strategy"] == strategy
    assert training["eval_metric"] == "perplexity" and len(training["memory_per_rank"]) == 2
    np.testing.assert_allclose([p[1] for p in training["loss_curve"]], [p[1] for p in single["loss_curve"]], rtol=0, atol=LOSS_TOL)
    assert training["final_perplexity"] == pytest.approx(single["final_perplexity"], rel=1e-4)
    if strategy == "fsdp":
        assert training["memory_mib"]["params_mib"] == pytest.approx(single["memory_mib"]["params_mib"] / 2, rel=0.02)
