"""Parallel-strategy contracts that need no second process: options, mesh and data layout,
architecture knowledge, and the accounting arithmetic (hand-computed)."""

from __future__ import annotations

import numpy as np
import pytest

from harness.config import typed
from harness.errors import ConfigError, Unsupported
from harness.training import accounting
from harness.training.architectures import check_layout, find_blocks, pipeline_adapter, split_stages, tp_plan
from harness.training.loop import samples_per_step, step_batches
from harness.training.options import DistributedOptions, TrainingOptions
from harness.training.plan import ParallelPlan, World


def _dist(**kwargs) -> DistributedOptions:
    return typed(DistributedOptions, kwargs, "scenario.distributed")


# --- options: strategies, meshes, refusals ---------------------------------------------


@pytest.mark.parametrize(
    "strategy, nproc, nnodes, mesh, expected",
    [
        ("ddp", 2, 1, None, {"dp": 2}),
        ("fsdp", 2, 1, None, {"dp": 2}),
        ("tp", 2, 1, None, {"tp": 2}),
        ("pp", 4, 1, None, {"pp": 4}),
        ("fsdp+tp", 4, 1, None, {"dp": 2, "tp": 2}),  # one node: tp = 2
        ("fsdp+tp", 8, 1, None, {"dp": 4, "tp": 2}),
        ("fsdp+tp", 4, 2, None, {"dp": 2, "tp": 4}),  # tp inside a node, fsdp across nodes
        ("fsdp+tp", 8, 1, [2, 4], {"dp": 2, "tp": 4}),
    ],
)
def test_mesh_shape(strategy, nproc, nnodes, mesh, expected):
    extra = {"rdzv_endpoint": "n0:29500"} if nnodes > 1 else {}
    dist = _dist(strategy=strategy, nproc_per_node=nproc, nnodes=nnodes, mesh=mesh, **extra)
    assert dist.mesh_shape == expected
    assert dist.data_parallel_size == expected.get("dp", 1)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"strategy": "fsdp"}, "nproc_per_node x nnodes is 1"),
        ({"strategy": "zero3", "nproc_per_node": 2}, "not one of ddp, fsdp, tp, pp, fsdp+tp"),
        ({"strategy": "fsdp", "nproc_per_node": 2, "mesh": [1, 2]}, "only strategy fsdp+tp takes"),
        ({"strategy": "fsdp+tp", "nproc_per_node": 4, "mesh": [2, 3]}, "holds 6 processes but the world has 4"),
        ({"strategy": "fsdp+tp", "nproc_per_node": 2}, "needs dp >= 2 and tp >= 2"),
        ({"strategy": "pp", "nproc_per_node": 4, "microbatches": 2}, "1f1b needs at least one micro-batch per stage"),
        ({"pipeline_schedule": "zb"}, "not one of 1f1b, gpipe"),
    ],
)
def test_bad_layouts_are_one_line_config_errors(kwargs, words):
    with pytest.raises(ConfigError) as info:
        _dist(**kwargs)
    assert words in info.value.one_line() and "\n" not in info.value.one_line()


def test_pp_microbatches_must_divide_the_batch():
    with pytest.raises(ConfigError, match="does not split into 3 equal micro-batches"):
        typed(
            TrainingOptions,
            {"batch_size": 16, "distributed": {"strategy": "pp", "nproc_per_node": 2, "microbatches": 3, "pipeline_schedule": "gpipe"}},
            "scenario",
        )


def test_ddp_checkpoint_identity_is_unchanged_and_other_strategies_differ():
    assert _dist(nproc_per_node=2).weights_identity() == {"world_size": 2}
    assert _dist(nproc_per_node=2, strategy="tp").weights_identity() == {"world_size": 2, "strategy": "tp", "mesh": {"tp": 2}}


@pytest.mark.parametrize(
    "warmup, profile, world, expected",
    [
        (5, 2, 2, [4, 5]),  # the last warm-up steps before measurement
        (2, 2, 2, [2]),  # never step 1 (lazy set-up; also the activation-accounting step)
        (1, 2, 2, []),
        (5, 0, 2, []),
        (5, 2, 1, []),  # one process: nothing to split
    ],
)
def test_profiled_steps_stay_inside_the_warm_up(warmup, profile, world, expected):
    options = TrainingOptions(warmup_steps_excluded=warmup, profile_steps=profile, distributed=DistributedOptions(nproc_per_node=world))
    assert options.profiled_steps() == expected


# --- world and data layout -------------------------------------------------------------


def test_world_places_ranks_in_the_mesh_outermost_first():
    dist = _dist(strategy="fsdp+tp", nproc_per_node=4)
    places = [(w.dp_size, w.dp_rank) for w in (World.of(4, r, r, dist) for r in range(4))]
    assert places == [(2, 0), (2, 0), (2, 1), (2, 1)]  # ranks 0,1 are one tp group
    assert [World.of(2, r, r, _dist(strategy="pp", nproc_per_node=2)).dp_rank for r in range(2)] == [0, 0]
    assert World(2, 1, 1).dp_size == 2 and World(2, 1, 1).dp_rank == 1  # ddp: a replica per process


def _split(n: int):
    from harness.data import Split

    return Split(features={"x": np.arange(n).reshape(n, 1)}, labels=np.zeros(n, dtype=np.int64))


def test_ranks_of_one_replica_read_the_same_data_and_replicas_different():
    options = TrainingOptions(batch_size=2, distributed=DistributedOptions(nproc_per_node=4, strategy="fsdp+tp"))
    dist = options.distributed
    firsts = [next(step_batches(_split(16), options, World.of(4, r, r, dist)))[0]["x"][:, 0].tolist() for r in range(4)]
    assert firsts[0] == firsts[1] and firsts[2] == firsts[3] and set(firsts[0]).isdisjoint(firsts[2])
    assert samples_per_step(options, World.of(4, 0, 0, dist)) == 4  # batch x 2 replicas


def test_parallel_plan_from_options():
    options = TrainingOptions(batch_size=8, activation_checkpointing=True, distributed=DistributedOptions(nproc_per_node=2, strategy="pp", microbatches=4))
    plan = ParallelPlan.from_options(options)
    assert plan.strategy == "pp" and plan.mesh == (("pp", 2),) and plan.microbatches == 4
    assert plan.activation_checkpointing and plan.size("pp") == 2 and plan.size("tp") == 1
    assert ParallelPlan.from_options(TrainingOptions()).mesh == ()


# --- architectures ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama():
    import transformers

    from parallel_runs import causal_lm

    return causal_lm(
        transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
    )


def test_blocks_are_the_module_list_holding_most_parameters(tiny_model, llama):
    assert find_blocks(tiny_model.module)[0] == "model.bert.encoder.layer"
    path, blocks = find_blocks(llama)
    assert path == "model.model.layers" and len(blocks) == 4


def test_tp_plans_come_from_transformers_or_the_bert_table(tiny_model, llama):
    bert = tp_plan(tiny_model.module)
    assert bert["model.bert.encoder.layer.*.attention.self.query"] == "colwise"
    assert bert["model.bert.encoder.layer.*.output.dense"] == "rowwise"
    decoder = tp_plan(llama)  # LlamaConfig.base_model_tp_plan, under the wrapper and base model
    assert decoder["model.model.layers.*.self_attn.o_proj"] == "rowwise"
    assert decoder["model.model.layers.*.mlp.gate_proj"] == "colwise"


def test_a_bare_decoder_is_its_own_transformers_model():
    """The decoder family trains the bare ``LlamaForCausalLM`` (no wrapper): plans and stages
    are addressed from it, not from its inner ``.model`` (the base ``LlamaModel``)."""
    import transformers

    from harness.training.architectures import hf_model

    bare = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True
        )
    )
    assert hf_model(bare) is bare
    assert find_blocks(bare)[0] == "model.layers"
    assert tp_plan(bare)["model.layers.*.self_attn.q_proj"] == "colwise"
    assert pipeline_adapter(bare).last == ("model.norm", "lm_head")


def test_a_model_without_a_tp_plan_or_stage_adapter_is_unsupported():
    import transformers

    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=64))
    with pytest.raises(Unsupported, match="no tensor-parallel plan"):
        tp_plan(gpt2)
    with pytest.raises(Unsupported, match="no pipeline-stage adapter for GPT2LMHeadModel"):
        pipeline_adapter(gpt2)


def test_layouts_the_config_cannot_take_are_refused_before_launch():
    with pytest.raises(ConfigError, match="2 blocks, which do not split into 3 equal pipeline stages"):
        check_layout({"num_hidden_layers": 2}, "bert_tiny", "pp", {"pp": 3})
    with pytest.raises(ConfigError, match="tp=4 does not divide model m's num_key_value_heads=2"):
        check_layout({"num_attention_heads": 8, "num_key_value_heads": 2}, "m", "fsdp+tp", {"dp": 2, "tp": 4})
    check_layout({"num_hidden_layers": 4, "num_attention_heads": 4}, "m", "pp", {"pp": 2})
    check_layout({}, "m", "tp", {"tp": 3})  # unknown fields: left to the workers' own check
    assert split_stages(4, 2, "m") == [range(0, 2), range(2, 4)]


# --- accounting arithmetic -------------------------------------------------------------


def test_union_of_intervals_counts_overlaps_once():
    I = accounting.Interval
    assert accounting.union_us([I(0, 10), I(5, 15), I(20, 30), I(22, 25)]) == 25.0
    assert accounting.union_us([]) == 0.0


def test_step_split_clips_communication_to_the_step():
    I = accounting.Interval
    split = accounting.split_step(10.0, [I(1000, 4000), I(3000, 5000), I(9000, 14000)], I(0, 10000))
    assert split == {"step_ms": 10.0, "communication_ms": 5.0, "compute_ms": 5.0}  # 1-5 ms and 9-10 ms


def test_tensor_bytes_counts_each_storage_once():
    import torch

    a = torch.zeros(10, 4)  # 160 bytes
    view = a[2:5]  # same storage
    b = torch.zeros(3, dtype=torch.bfloat16)  # 6 bytes
    assert accounting.tensor_bytes([a, view, b, None]) == 166


def test_state_figures_in_mib():
    figures = accounting.state_mib({"params": 2**20, "grads": 2**20, "optimizer": 2 * 2**20})
    assert figures == {"params_mib": 1.0, "grads_mib": 1.0, "optimizer_mib": 2.0, "model_state_mib": 4.0}


def test_saved_activations_peak_by_hand():
    """x (4x8 fp32, 128 B) saved by the matmul, relu's output (4x3, 48 B) by relu; the
    weight is a parameter and is left out; all released after backward."""
    import torch

    weight = torch.nn.Parameter(torch.ones(8, 3))
    meter = accounting.SavedActivations([weight])
    with meter.measure():
        x = torch.ones(4, 8)
        y = (x @ weight).relu().sum()
    assert meter.peak == 128 + 48
    y.backward()
    del y
    assert meter.current == 0


def test_checkpointing_keeps_only_block_inputs():
    import torch

    from harness.training.parallel import checkpoint_blocks

    block = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8))
    x = torch.ones(4, 8, requires_grad=True)
    plain = accounting.SavedActivations(block.parameters())
    with plain.measure(block):
        block(x).sum().backward()
    checkpoint_blocks([block])
    kept = accounting.SavedActivations(block.parameters())
    with kept.measure(block):
        out = block(x).sum()
    assert kept.peak == 4 * 8 * 4  # only the input the checkpoint keeps
    assert plain.peak > kept.peak
    out.backward()
    assert x.grad is not None


def test_clip_grad_norm_matches_torch_on_plain_tensors():
    import torch

    from harness.training.parallel import clip_grad_norm

    torch.manual_seed(0)
    ours, theirs = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    theirs.load_state_dict(ours.state_dict())
    ours(torch.randn(5, 4)).pow(2).sum().backward()
    for p, q in zip(ours.parameters(), theirs.parameters()):
        q.grad = p.grad.clone()
    norm = clip_grad_norm(ours.parameters(), 0.5)
    expected = torch.nn.utils.clip_grad_norm_(theirs.parameters(), 0.5)
    assert norm == pytest.approx(float(expected), rel=1e-6) and norm > 0.5  # it did clip
    for p, q in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


def test_a_backend_that_declares_only_ddp_refuses_other_strategies_in_one_line():
    """torch_xla declares the default (ddp): pp or tp on it is ``unsupported`` before any launch."""
    from types import SimpleNamespace

    from harness.backend import Capabilities
    from harness.scenarios.training import require_training

    class XlaLike:
        name = "torch_xla"

        def capabilities(self) -> Capabilities:
            return Capabilities(precisions=frozenset({"fp32"}), consumes=("torch",), training=True)

        def check_precision(self, precision: str) -> None:
            pass

    ctx = SimpleNamespace(backend=XlaLike())
    require_training(ctx, "fp32", "ddp")
    with pytest.raises(Unsupported) as info:
        require_training(ctx, "fp32", "pp")
    assert info.value.one_line().startswith("backend 'torch_xla' does not train with strategy pp (it declares ddp)")


def test_pytorch_declares_every_strategy():
    from harness.backends.pytorch import PyTorchBackend, PyTorchOptions
    from harness.training.options import STRATEGIES

    assert PyTorchBackend(PyTorchOptions()).capabilities().training_strategies == frozenset(STRATEGIES)


def test_memory_max_over_ranks_by_hand():
    from harness.training.metrics import max_over_ranks

    ranks = [
        {"rank": 0, "params_mib": 7.8, "activations_mib": 1.3, "peak_rss_mib": 555.0},
        {"rank": 1, "params_mib": 0.2, "activations_mib": 0.6, "peak_rss_mib": 560.5},
    ]
    assert max_over_ranks(ranks) == {"params_mib": 7.8, "activations_mib": 1.3, "peak_rss_mib": 560.5}
    assert max_over_ranks(None) is None and max_over_ranks([]) is None
