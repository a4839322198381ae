"""Checkpoints in the artifact cache and ``model.checkpoint=PATH|auto``."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from conftest import FAST, records_in, run_cli

from harness import autotrain, checkpoints, compose
from harness.data import DatasetOptions, embedded_tokenizer, load_dataset
from harness.errors import ConfigError
from harness.models import ModelOptions, load_model
from harness.training.options import TrainingOptions

TINY = ModelOptions(name="t", config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=200))


def test_key_follows_weights_relevant_inputs_only():
    base = checkpoints.checkpoint_key(TINY, "data1", TrainingOptions())
    assert checkpoints.checkpoint_key(replace(TINY, name="other-name"), "data1", TrainingOptions()) == base
    assert checkpoints.checkpoint_key(TINY, "data1", TrainingOptions(eval_interval=7, target_accuracy=0.5)) == base
    assert checkpoints.checkpoint_key(TINY, "data2", TrainingOptions()) != base
    assert checkpoints.checkpoint_key(TINY, "data1", TrainingOptions(lr=3e-4)) != base
    assert checkpoints.checkpoint_key(replace(TINY, seed=1), "data1", TrainingOptions()) != base


def test_save_then_load_round_trips_weights_and_tokenizer(tmp_path):
    model = load_model(TINY)
    folder = checkpoints.save(model, embedded_tokenizer(), "k1", tmp_path, {"note": "test"})
    assert checkpoints.find("k1", tmp_path) == folder
    assert {p.name for p in folder.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json", checkpoints.MARKER}
    again = load_model(TINY, str(folder))
    assert again.tokenizer is not None and again.tokenizer("the movie was good")["input_ids"][0] == again.tokenizer.cls_token_id
    sample = load_dataset(DatasetOptions(train_size=8, eval_size=4), seq_len=8).sample_batch(4)
    from harness.export import eager_outputs

    np.testing.assert_allclose(eager_outputs(model, sample), eager_outputs(again, sample), atol=1e-6)
    # saving again under the same key replaces the folder in place
    assert checkpoints.save(model, None, "k1", tmp_path, {}) == folder and not (folder / "tokenizer.json").exists()
    assert not list(folder.parent.glob(".tmp-*")) and not list(folder.parent.glob(".old-*"))


def test_incomplete_folder_is_not_a_checkpoint(tmp_path):
    (tmp_path / checkpoints.KIND / "k2").mkdir(parents=True)
    assert checkpoints.find("k2", tmp_path) is None


def test_checkpoint_folder_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="not a checkpoint folder"):
        checkpoints.checkpoint_folder(tmp_path / "nope")
    folder = checkpoints.save(load_model(TINY), None, "k3", tmp_path, {})
    assert checkpoints.checkpoint_folder(str(folder)) == folder


def test_recipes_come_from_the_scenario_yaml():
    bert = compose.recipe_for("bert")
    assert bert.name == "bert_train"
    assert (bert.options.optimizer, bert.options.lr, bert.options.seq_len, bert.options.epochs) == ("adamw", 5e-4, 32, 2)
    resnet = compose.recipe_for("resnet").options
    assert (resnet.batch_size, resnet.schedule, resnet.epochs) == (64, "cosine", 10)
    assert compose.recipe_for("llama").name == "llm_train"


def test_auto_run_gets_the_recipe_in_its_spec():
    from harness.plugins import load_plugins
    from harness.testing import compose_overrides

    plugins = load_plugins()
    spec = compose_overrides(["+scenario=bert_fp32", "++model.checkpoint=auto"], plugins)
    assert spec.auto_recipe is not None and spec.auto_recipe.name == "bert_train"
    assert compose_overrides(["scenario=bert_fp32"], plugins).auto_recipe is None


def test_recipe_composes_inside_a_running_hydra_app():
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_module(config_module="harness.conf", version_base="1.3"):
        assert GlobalHydra.instance().is_initialized()
        assert compose.recipe_for("bert").options.lr == 5e-4
        assert GlobalHydra.instance().is_initialized()  # the app's Hydra is left as it was


def test_auto_reuses_the_recipe_checkpoint_without_training(tmp_path):
    recipe = compose.recipe_for("bert")
    dataset = DatasetOptions(train_size=40, eval_size=10)
    data = load_dataset(dataset, seq_len=recipe.options.seq_len)
    key = checkpoints.checkpoint_key(TINY, data.fingerprint(), recipe.options)
    folder = checkpoints.save(load_model(TINY), data.tokenizer, key, tmp_path, {})
    lines: list[str] = []

    def no_training():
        raise AssertionError("a cached checkpoint must not train")

    assert autotrain.auto_checkpoint(TINY, dataset, str(tmp_path), recipe, no_training, lines.append) == folder
    assert any("reusing" in line for line in lines)


@pytest.mark.slow
def test_auto_trains_once_then_reuses(tmp_path):
    """An inference run with model.checkpoint=auto trains bert_tiny with bert_train's recipe, once."""
    args = [
        "+scenario=bert_fp32",
        "backend=onnxruntime",
        *FAST,
        "++model.checkpoint=auto",
        "dataset.train_size=640",
        "dataset.eval_size=200",
        f"cache_dir={tmp_path / 'cache'}",
    ]
    first = run_cli(*args, cwd=tmp_path, timeout=600)
    assert first.returncode == 0, first.stderr
    assert "training it once on pytorch" in first.stderr and "auto-training bert_tiny: step" in first.stderr
    second = run_cli(*args, cwd=tmp_path, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "reusing" in second.stderr and "auto-training" not in second.stderr
    sources = {rec["model"]["source"] for rec in records_in(tmp_path / "results")}
    (source,) = sources
    assert source.startswith("checkpoint:") and "checkpoints" in source
