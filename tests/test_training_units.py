"""Training formulas and contracts with hand-computed numbers: schedules, throughput
without warm-up, time to target, scaling efficiency, loss curve points, batching, options."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

from harness.config import typed
from harness.data import Split
from harness.errors import ConfigError
from harness.training import metrics
from harness.training.loop import step_batches, steps_per_epoch
from harness.training.optim import build_optimizer, build_schedule, parameter_groups
from harness.training.options import TrainingOptions
from harness.training.plan import TrainingPlan, World


def plan_for(**overrides) -> TrainingPlan:
    options = TrainingOptions(**{"lr": 0.1, "warmup_steps": 2, **overrides})
    return TrainingPlan.from_options(options, ("x",), total_steps=10)


def lrs_at(plan: TrainingPlan, steps: list[int]) -> list[float]:
    """The LR the optimizer uses after ``k`` scheduler steps, for each k in ``steps``."""
    import torch

    module = torch.nn.Linear(2, 2)
    optimizer = build_optimizer(module, plan)
    schedule = build_schedule(optimizer, plan)
    seen, done = [], 0
    for k in steps:
        while done < k:
            optimizer.step()
            schedule.step()
            done += 1
        seen.append(optimizer.param_groups[0]["lr"])
    return seen


# --- LR schedules: lr 0.1, 2 warm-up steps, 10 steps in all -------------------------------


def test_linear_schedule_warms_up_then_decays_to_zero():
    # warm-up: 0.1 * k / 2; decay: 0.1 * (10 - k) / (10 - 2)
    assert lrs_at(plan_for(schedule="linear"), [0, 1, 2, 6, 9, 10]) == pytest.approx([0.0, 0.05, 0.1, 0.05, 0.0125, 0.0])


def test_cosine_schedule_follows_half_a_cosine():
    # after warm-up: 0.1 * 0.5 * (1 + cos(pi * (k - 2) / 8))
    expected = [0.05, 0.1, 0.1 * 0.5 * (1 + math.cos(math.pi / 4)), 0.05, 0.0]
    assert lrs_at(plan_for(schedule="cosine"), [1, 2, 4, 6, 10]) == pytest.approx(expected)


def test_constant_schedule_holds_after_warm_up():
    assert lrs_at(plan_for(schedule="constant"), [0, 1, 2, 5, 10]) == pytest.approx([0.0, 0.05, 0.1, 0.1, 0.1])


def test_warmup_ratio_is_used_when_warmup_steps_is_zero():
    options = TrainingOptions(warmup_steps=0, warmup_ratio=0.25)
    assert TrainingPlan.from_options(options, ("x",), total_steps=10).warmup_steps == 2  # int(2.5)
    assert TrainingPlan.from_options(TrainingOptions(warmup_steps=7), ("x",), 10).warmup_steps == 7


def test_max_steps_overrides_epochs():
    assert TrainingOptions(epochs=3).total_steps(steps_per_epoch=125) == 375
    assert TrainingOptions(epochs=3, max_steps=40).total_steps(steps_per_epoch=125) == 40


# --- optimizers ---------------------------------------------------------------------------


@pytest.mark.parametrize("name, cls", [("adamw", "AdamW"), ("adam", "Adam"), ("sgd", "SGD"), ("adagrad", "Adagrad"), ("adadelta", "Adadelta")])
def test_every_optimizer_is_the_torch_one(name, cls):
    import torch

    optimizer = build_optimizer(torch.nn.Linear(3, 2), plan_for(optimizer=name))
    assert type(optimizer).__name__ == cls
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)


def test_sgd_gets_momentum_and_nesterov():
    import torch

    optimizer = build_optimizer(torch.nn.Linear(3, 2), plan_for(optimizer="sgd", momentum=0.8, nesterov=True))
    assert optimizer.defaults["momentum"] == 0.8 and optimizer.defaults["nesterov"] is True


def test_weight_decay_skips_biases_and_norms():
    import torch

    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    decay, no_decay = parameter_groups(module, 0.01)
    assert decay["weight_decay"] == 0.01 and [tuple(p.shape) for p in decay["params"]] == [(4, 3)]
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 3  # linear bias, norm weight and bias


# --- metrics ------------------------------------------------------------------------------


def test_throughput_leaves_out_the_warm_up_steps():
    # kept steps: 20 + 30 + 50 ms = 0.1 s for 3 steps of 32 samples -> 960 samples/s
    assert metrics.samples_per_second([100.0, 50.0, 20.0, 30.0, 50.0], 32, excluded=2) == pytest.approx(960.0)
    # nothing excluded: 5 x 32 samples in 0.25 s
    assert metrics.samples_per_second([100.0, 50.0, 20.0, 30.0, 50.0], 32, excluded=0) == pytest.approx(640.0)


def test_excluding_every_step_is_an_error():
    with pytest.raises(ValueError, match="leave none"):
        metrics.samples_per_second([10.0, 10.0], 8, excluded=2)


CURVE = [(50, 10.0, 0.60), (100, 21.0, 0.88), (150, 33.5, 0.91), (200, 45.0, 0.95)]


def test_time_to_target_is_the_first_eval_at_or_above_target():
    result = metrics.time_to_target(CURVE, 0.9)
    assert (result.seconds, result.step, result.reason) == (33.5, 150, None)
    assert metrics.time_to_target(CURVE, 0.95).seconds == 45.0  # equality counts


def test_time_to_target_never_reached_is_null_with_the_best_seen():
    result = metrics.time_to_target(CURVE, 0.99)
    assert result.seconds is None and result.step is None
    assert "never reached" in result.reason and "0.9500 at step 200" in result.reason


def test_time_to_target_without_target_or_evals_says_why():
    assert "scenario.target_accuracy" in metrics.time_to_target(CURVE, None).reason
    assert "no evaluation" in metrics.time_to_target([], 0.9).reason


def test_scaling_efficiency():
    # 2 processes at 180 samples/s global against 100 samples/s alone: 180 / (2 x 100)
    assert metrics.scaling_efficiency(180.0, 2, 100.0) == pytest.approx(0.9)
    assert metrics.scaling_efficiency(100.0, 1, 100.0) == pytest.approx(1.0)


def test_loss_points_average_each_window():
    assert metrics.loss_points([1.0, 2.0, 3.0, 4.0, 5.0], 2) == [[2, 1.5], [4, 3.5], [5, 5.0]]
    assert metrics.loss_points([1.0, 3.0], 10) == [[2, 2.0]]


# --- batching -----------------------------------------------------------------------------


def _split(n: int) -> Split:
    return Split({"x": np.arange(n)[:, None]}, np.arange(n) % 2)


def test_ranks_take_disjoint_slices_of_each_step():
    options = TrainingOptions(batch_size=2, grad_accum_steps=2)
    split = _split(16)
    seen = []
    for rank in (0, 1):
        micro = next(step_batches(split, options, World(2, rank, rank)))
        assert [len(m["labels"]) for m in micro] == [2, 2]  # accumulation: 2 micro-batches of 2
        seen += [int(v) for m in micro for v in m["x"][:, 0]]
    assert sorted(seen) == sorted(set(seen)) and len(seen) == 8  # one global step = 8 distinct examples


def test_steps_per_epoch_drops_the_incomplete_step_and_refuses_tiny_splits():
    assert steps_per_epoch(_split(100), TrainingOptions(batch_size=32), World()) == 3
    assert steps_per_epoch(_split(100), TrainingOptions(batch_size=16), World(2, 0, 0)) == 3
    with pytest.raises(ConfigError, match="fewer than one step"):
        steps_per_epoch(_split(10), TrainingOptions(batch_size=32), World())


def test_epochs_reshuffle_deterministically():
    options = TrainingOptions(batch_size=4, seed=3)
    first = [next(step_batches(_split(8), options, World()))[0]["x"][:, 0].tolist() for _ in range(2)]
    assert first[0] == first[1]  # same seed, same order


# --- options ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "node, key",
    [
        ({"optimizer": "lamb"}, "scenario.optimizer"),
        ({"schedule": "step"}, "scenario.schedule"),
        ({"precision": "int8"}, "scenario.precision"),
        ({"lr": 0}, "scenario.lr"),
        ({"nesterov": True}, "scenario.nesterov"),
        ({"dropout": 1.5}, "scenario.dropout"),
        ({"target_accuracy": 2}, "scenario.target_accuracy"),
        ({"distributed": {"nproc_per_node": 0}}, "scenario.distributed.nproc_per_node"),
        ({"distributed": {"nnodes": 2}}, "scenario.distributed.rdzv_endpoint"),
        ({"distributed": {"nnodes": 2, "rdzv_endpoint": "head"}}, "scenario.distributed.rdzv_endpoint"),
        ({"distributed": {"nnodes": 2, "rdzv_endpoint": "head:http"}}, "scenario.distributed.rdzv_endpoint"),
        ({"distributed": {"nnodes": 2, "node_rank": 2, "rdzv_endpoint": "head:29500"}}, "scenario.distributed.node_rank"),
    ],
)
def test_bad_options_name_the_key(node, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        typed(TrainingOptions, node, "scenario")


def test_world_size_is_processes_times_nodes():
    options = typed(TrainingOptions, {"distributed": {"nproc_per_node": 4, "nnodes": 2, "rdzv_endpoint": "h:29500"}}, "scenario")
    assert options.distributed.world_size == 8


# --- torchrun launch ----------------------------------------------------------------------


def test_torchrun_command_one_node_is_standalone(tmp_path):
    from harness.training.ddp import torchrun_command
    from harness.training.options import DistributedOptions

    command = torchrun_command(tmp_path / "job.json", DistributedOptions(nproc_per_node=2))
    assert command[1:4] == ["-m", "torch.distributed.run", "--nproc_per_node=2"] and "--standalone" in command
    assert command[-3:] == ["-m", "harness.training.ddp_worker", str(tmp_path / "job.json")]
    multi = torchrun_command(tmp_path / "job.json", DistributedOptions(nproc_per_node=4, nnodes=2, node_rank=1, rdzv_endpoint="head:29500"))
    assert {"--nnodes=2", "--node_rank=1", "--rdzv_endpoint=head:29500"} <= set(multi) and "--standalone" not in multi
    # static rendezvous: torchrun honours --node_rank, so global rank 0 is on node 0 (c10d would ignore it)
    assert "--rdzv_backend=static" in multi
    # nodes are waited for as long as the launch may last, not torchrun's own 600 s
    assert "--rdzv_conf=timeout=1830" in multi
    # one node is standalone even with an endpoint (e.g. +distributed=slurm outside a job)
    single = torchrun_command(tmp_path / "job.json", DistributedOptions(nproc_per_node=2, rdzv_endpoint="localhost:29500"))
    assert "--standalone" in single and not any(arg.startswith("--rdzv") for arg in single)


# --- Slurm rendezvous (+distributed=slurm) ------------------------------------------------


def _fake_scontrol(folder: Path, hosts: str) -> dict[str, str]:
    """A ``scontrol`` that expands any node list to ``hosts``: the unit under test is our use of it."""
    script = folder / "scontrol"
    script.write_text(f"#!/bin/sh\necho '{hosts}'\n")
    script.chmod(0o755)
    return {"PATH": f"{folder}:{os.environ['PATH']}"}


def test_slurm_rendezvous_is_node_0_and_a_port_from_the_job(tmp_path, monkeypatch):
    from harness.slurm import rendezvous_endpoint

    for key, value in _fake_scontrol(tmp_path, "gpu07\ngpu08").items():
        monkeypatch.setenv(key, value)
    env = {"SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "123456"}
    assert rendezvous_endpoint(env) == "gpu07:23456"  # 20000 + 123456 % 20000
    assert rendezvous_endpoint({**env, "MASTER_ADDR": "head", "MASTER_PORT": "29999"}) == "head:29999"


def test_slurm_rendezvous_outside_a_job_is_this_machine():
    from harness.slurm import rendezvous_endpoint

    assert rendezvous_endpoint({}) == "localhost:29500"
    assert rendezvous_endpoint({"MASTER_PORT": "31000"}) == "localhost:31000"


def test_slurm_rendezvous_with_a_strange_job_id_names_the_fix():
    from harness.slurm import rendezvous_endpoint

    with pytest.raises(ConfigError, match="not a job number") as info:
        rendezvous_endpoint({"SLURM_JOB_NODELIST": "n1", "MASTER_ADDR": "n1", "SLURM_JOB_ID": "12_3"})
    assert "fix:" in info.value.one_line()


def test_distributed_slurm_preset_reads_the_task(tmp_path, monkeypatch):
    """``+distributed=slurm``: one task per node; task count and id become nnodes and node_rank."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from harness.compose import normalise

    for key, value in {
        "SLURM_NTASKS": "2",
        "SLURM_PROCID": "1",
        "SLURM_JOB_NODELIST": "n[1-2]",
        "SLURM_JOB_ID": "7",
        **_fake_scontrol(tmp_path, "n1\nn2"),
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with initialize_config_module(config_module="harness.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=normalise(["+scenario=bert_train", "+distributed=slurm"]))  # as the CLI reads +scenario=
    dist = OmegaConf.to_container(cfg.scenario.distributed, resolve=True)
    assert dist == {
        "nproc_per_node": 1,
        "nnodes": 2,
        "node_rank": 1,
        "rdzv_endpoint": "n1:20007",
        "timeout_s": 1800,
        "strategy": "ddp",
        "mesh": None,
        "microbatches": 4,
        "pipeline_schedule": "1f1b",
    }


def test_worker_threads_split_the_cores(monkeypatch):
    from harness.training.ddp import worker_env
    from harness.training.options import DistributedOptions

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert worker_env(DistributedOptions(nproc_per_node=2))["OMP_NUM_THREADS"] == "4"
    assert worker_env(DistributedOptions(nproc_per_node=16))["OMP_NUM_THREADS"] == "1"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert worker_env(DistributedOptions(nproc_per_node=2))["OMP_NUM_THREADS"] == "3"  # the user's choice wins
