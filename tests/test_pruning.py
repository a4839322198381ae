"""Pruning: magnitude sparsity, structured pruning that really shrinks BERT, caching, fine-tuning."""

from __future__ import annotations

import numpy as np
import pytest

from harness.compression import pruning
from harness.compression.pruning import PruningOptions
from harness.errors import ConfigError, Unsupported
from harness.export import eager_outputs, export_onnx


@pytest.fixture(scope="module")
def text_data():
    from harness.data import DatasetOptions, load_dataset

    return load_dataset(DatasetOptions(train_size=96, eval_size=16), seq_len=16)


@pytest.fixture(scope="module")
def small_bert():
    """4 heads and 128 FFN neurons per layer, so fractions are visible."""
    from harness.models import ModelOptions, load_model

    return load_model(
        ModelOptions(name="bert_prune_test", config=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, vocab_size=200))
    )


def test_options_validate_with_the_key():
    from harness.config import typed

    with pytest.raises(ConfigError, match="scenario.pruning.method"):
        typed(PruningOptions, {"method": "random"}, "scenario")
    with pytest.raises(ValueError, match="pruning.heads"):
        PruningOptions(method="structured", heads=1.0)


def test_magnitude_pruning_reaches_the_sparsity_and_keeps_shapes(small_bert, text_data, tmp_path):
    pruned, info = pruning.prune(small_bert, text_data, PruningOptions(method="magnitude", sparsity=0.6), cache_root=str(tmp_path), report=lambda s: None)
    assert info["sparsity"]["linear"] == pytest.approx(0.6, abs=0.01)
    assert pruned.params == small_bert.params == info["params_after"]
    assert pruning.sparsity(small_bert.module)["linear"] < 0.01, "the source model must stay dense"


def test_structured_pruning_removes_heads_and_neurons_and_shrinks_the_onnx(small_bert, text_data, tmp_path):
    options = PruningOptions(method="structured", heads=0.5, ffn=0.5, criterion="importance", importance_samples=32)
    pruned, info = pruning.prune(small_bert, text_data, options, cache_root=str(tmp_path), report=lambda s: None)
    assert info["heads_kept"] == [2, 2] and info["ffn_kept"] == [64, 64]
    assert info["heads_removed"] == 4 and info["ffn_removed"] == 128
    assert pruned.params < small_bert.params and info["params_after"] == pruned.params
    layer = pruning.bert_layers(pruned.module)[0]
    assert layer.attention.self.num_attention_heads == 2 and layer.attention.self.query.out_features == 32
    assert pruning.bert_layers(small_bert.module)[0].attention.self.num_attention_heads == 4

    batch = text_data.sample_batch(3)
    logits = eager_outputs(pruned, batch)
    assert logits.shape == (3, 2) and np.isfinite(logits).all()
    full = export_onnx(small_bert, batch, str(tmp_path / "c"))
    small = export_onnx(pruned, batch, str(tmp_path / "c"))  # validated against the pruned eager model
    assert small.key != full.key
    assert small.size_bytes < full.size_bytes


def test_magnitude_criterion_keeps_the_largest_heads(small_bert, text_data):
    import copy

    module = copy.deepcopy(small_bert.module)
    options = PruningOptions(method="structured", heads=0.25, ffn=0.25, criterion="magnitude")
    plan = pruning.structured_plan(module, options, [])
    heads, ffn = pruning._magnitude_scores(pruning.bert_layers(module))
    for kept, scores in zip(plan["heads"], heads):
        dropped = set(range(len(scores))) - set(kept)
        assert len(kept) == 3 and all(scores[d] <= min(scores[k] for k in kept) for d in dropped)
    assert [len(k) for k in plan["ffn"]] == [96, 96]


def test_keep_leaves_at_least_one_head():
    import torch

    assert pruning._keep(torch.tensor([0.3, 0.1]), 0.9) == [0]


def test_pruned_model_is_cached_and_restored_identically(small_bert, text_data, tmp_path):
    options = PruningOptions(method="structured", heads=0.5, ffn=0.25, importance_samples=16)
    first, info1 = pruning.prune(small_bert, text_data, options, cache_root=str(tmp_path), report=lambda s: None)
    second, info2 = pruning.prune(small_bert, text_data, options, cache_root=str(tmp_path), report=lambda s: None)
    assert (info1["cached"], info2["cached"]) == (False, True)
    assert second.params == first.params
    batch = text_data.sample_batch(4)
    np.testing.assert_allclose(eager_outputs(second, batch), eager_outputs(first, batch), atol=1e-6)


def test_structured_pruning_refuses_non_bert_models(text_data):
    from harness.models import ModelOptions, load_model

    resnet = load_model(
        ModelOptions(
            name="r", family="resnet", num_labels=10, config=dict(num_channels=1, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
        )
    )
    with pytest.raises(Unsupported, match="BERT"):
        pruning.prune(resnet, text_data, PruningOptions(method="structured"), report=lambda s: None)


@pytest.mark.slow
def test_finetuning_after_pruning_uses_the_training_loop(small_bert, text_data, tmp_path):
    from backends.pytorch import PyTorchBackend, PyTorchOptions

    options = PruningOptions(method="structured", heads=0.5, ffn=0.5, importance_samples=16, finetune_steps=3, finetune_batch_size=8)
    pruned, info = pruning.prune(small_bert, text_data, options, cache_root=str(tmp_path), trainer=PyTorchBackend(PyTorchOptions()), report=lambda s: None)
    assert info["finetune"]["steps"] == 3 and info["finetune"]["backend"] == "pytorch"
    assert info["finetune"]["final_accuracy"] is not None
    assert not pruned.module.training
    with pytest.raises(Unsupported, match="train"):
        pruning.prune(
            small_bert,
            text_data,
            PruningOptions(method="structured", finetune_steps=2, importance_samples=8),
            cache_root=str(tmp_path / "other"),
            trainer=None,
            report=lambda s: None,
        )
