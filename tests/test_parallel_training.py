"""Every strategy trains the same mathematics as one process (BERT and a Llama decoder).

Models: BERT, a Llama decoder, and a bare ``LlamaForCausalLM`` with tied embeddings (the
decoder family's shape; under pp the tied weight lives on the first and last stage).
Each case spawns 2 (fsdp+tp: 4) gloo processes that train through the pytorch backend's
real session (tests/parallel_runs.py) on fixed global batches, dropout off. Against the
1-process run on the same batches, after ``STEPS`` AdamW steps with clipping:

- the loss of every step (mean over replicas) within ``LOSS_TOL`` (measured here: below 5e-7),
- the whole trained weights gathered on rank 0 within ``WEIGHT_TOL`` (measured: below 3e-6),
- the logits of a collective evaluation within ``WEIGHT_TOL``.

The differences that remain are float reduction order (all-reduce, reduce-scatter, split
matmuls). Memory accounting is checked on the same runs: fsdp holds half the parameters.
"""

from __future__ import annotations

import numpy as np
import pytest

from parallel_runs import run_single, run_world

pytestmark = pytest.mark.slow

LOSS_TOL = 1e-4
WEIGHT_TOL = 1e-4
CASES = [
    ("bert", "fsdp"),
    ("bert", "tp"),
    ("bert", "pp"),
    ("bert", "fsdp+tp"),
    ("llama", "ddp"),
    ("llama", "fsdp"),
    ("llama", "tp"),
    ("llama", "pp"),
    ("llama", "pp-gpipe"),
    ("llama", "fsdp+tp"),
    ("llama-tied", "fsdp"),
    ("llama-tied", "pp"),
]
_single: dict[str, dict] = {}
_runs: dict[tuple[str, str], dict] = {}


def single(kind: str) -> dict:
    if kind not in _single:
        _single[kind] = run_single(kind)
    return _single[kind]


def run(kind: str, strategy: str) -> dict:
    if (kind, strategy) not in _runs:
        _runs[(kind, strategy)] = run_world(kind, strategy, world=4 if strategy == "fsdp+tp" else 2)
    return _runs[(kind, strategy)]


def assert_same_training(result: dict, reference: dict) -> None:
    np.testing.assert_allclose(result["losses"], reference["losses"], rtol=0, atol=LOSS_TOL)
    assert set(result["state"]) == set(reference["state"])
    for name, tensor in result["state"].items():
        np.testing.assert_allclose(tensor.float().numpy(), reference["state"][name].float().numpy(), rtol=0, atol=WEIGHT_TOL, err_msg=name)
    np.testing.assert_allclose(result["logits"], reference["logits"], rtol=0, atol=WEIGHT_TOL)


@pytest.mark.parametrize("kind, strategy", CASES)
def test_strategy_matches_one_process(kind, strategy):
    result = run(kind, strategy)
    assert_same_training(result, single(kind))
    metrics = result["metrics"]
    assert metrics["strategy"] == strategy.partition("-")[0]
    assert len(metrics["per_rank"]) == (4 if strategy == "fsdp+tp" else 2)
    assert all(r["model_state_mib"] > 0 and r["activations_mib"] > 0 for r in metrics["per_rank"])


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_fsdp_holds_half_the_parameters_gradients_and_optimizer_state(kind):
    whole, sharded = single(kind)["memory"], run(kind, "fsdp")["memory"]
    for key in ("params_mib", "grads_mib", "optimizer_mib"):
        assert sharded[key] == pytest.approx(whole[key] / 2, rel=0.02), key  # padding of odd dims aside
    # half the batch per replica: about half the activations (FSDP's all-gathered weights are not activations)
    assert sharded["activations_mib"] < 0.6 * whole["activations_mib"]


def test_pipeline_stages_split_the_blocks_and_1f1b_keeps_fewer_activations_than_gpipe():
    whole = single("llama")["memory"]
    one_f_one_b, gpipe = run("llama", "pp")["memory"], run("llama", "pp-gpipe")["memory"]
    assert one_f_one_b["params_mib"] < whole["params_mib"]  # rank 0: embedding + its half of the blocks
    assert one_f_one_b["activations_mib"] < gpipe["activations_mib"]


def test_activation_checkpointing_and_bf16_cut_saved_activations_under_fsdp():
    plain = run("llama", "fsdp")
    checkpointed = run_world("llama", "fsdp", checkpointing=True)
    assert_same_training(checkpointed, single("llama"))  # recomputation changes no number
    assert checkpointed["memory"]["activations_mib"] < plain["memory"]["activations_mib"] / 2
    bf16 = run_world("llama", "fsdp", precision="bf16")
    assert "MixedPrecisionPolicy(param bfloat16, reduce float32)" in bf16["metrics"]["mixed_precision"]
    assert bf16["memory"]["activations_mib"] < plain["memory"]["activations_mib"]
    np.testing.assert_allclose(bf16["losses"], single("llama")["losses"], atol=0.05)  # bf16 rounding only
