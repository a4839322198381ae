"""``+scenario=llm_train``: causal-LM pretraining on the embedded corpus, and decoder checkpoints.

Formulas (the next-token loss, perplexity, time to a lower-is-better target) on hand-made
numbers; the corpus as a causal-LM task; decoder checkpoints saved with their LM head and
tokenizer (logits equal after the round trip); the real CLI training llama_tiny past its
perplexity target; ``model.checkpoint=auto`` reusing what ``llm_train`` wrote.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import records_in, run_cli

from harness.data import DatasetOptions, load_dataset
from harness.errors import ConfigError
from harness.models import ModelOptions, load_model
from harness.training import metrics, objectives

TINY = ModelOptions(
    name="llama_tiny",
    family="llama",
    config=dict(
        vocab_size=1024,
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    ),
)
CORPUS = DatasetOptions(name="corpus", kind="corpus", train_size=200, eval_size=20)


# --- formulas --------------------------------------------------------------------------------


def test_causal_lm_loss_scores_each_position_against_the_next_token() -> None:
    import torch

    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [1 / 3, 1 / 3, 1 / 3]]]))
    labels = torch.tensor([[2, 0, 1]])  # position 0 predicts 0 (p 0.5), position 1 predicts 1 (p 0.8)
    loss = objectives.causal_lm_loss(logits, {"labels": labels, "attention_mask": torch.ones_like(labels)})
    assert float(loss) == pytest.approx(-(math.log(0.5) + math.log(0.8)) / 2, rel=1e-6)
    masked = objectives.causal_lm_loss(logits, {"labels": labels, "attention_mask": torch.tensor([[1, 1, 0]])})
    assert float(masked) == pytest.approx(-math.log(0.5), rel=1e-6)  # the padded target is not scored


class _FixedLogits:
    """A training session stand-in whose predictions are fixed log-probabilities."""

    def __init__(self, logprobs: np.ndarray) -> None:
        self.logprobs = logprobs

    def load(self, batch: dict) -> dict:
        return batch

    def predict(self, inputs: dict) -> np.ndarray:
        return np.repeat(self.logprobs[None, None], inputs["input_ids"].shape[0], axis=0).repeat(inputs["input_ids"].shape[1], axis=1)


def test_perplexity_is_exp_of_the_mean_next_token_nll() -> None:
    from harness.data import Split, TaskData

    ids = np.array([[0, 1, 1], [1, 0, 0]])  # targets: 1, 1, 0, 0
    split = Split({"input_ids": ids, "attention_mask": np.ones_like(ids)}, ids)
    data = TaskData("causal-lm", 0, [], None, 3, split, split)
    session = _FixedLogits(np.log(np.array([0.25, 0.75])))
    want = math.exp(-(2 * math.log(0.75) + 2 * math.log(0.25)) / 4)
    assert objectives.perplexity(session, data, batch_size=1) == pytest.approx(want, rel=1e-9)


def test_time_to_target_for_a_lower_is_better_metric() -> None:
    evals = [(10, 5.0, 90.0), (20, 11.0, 7.5), (30, 18.0, 3.9)]
    hit = metrics.time_to_target(evals, 8.0, "perplexity", higher_is_better=False)
    assert (hit.seconds, hit.step, hit.reason) == (11.0, 20, None)
    miss = metrics.time_to_target(evals, 2.0, "perplexity", higher_is_better=False)
    assert miss.seconds is None and "best perplexity 3.9000 at step 30" in miss.reason
    assert "target_perplexity" in metrics.time_to_target(evals, None, "perplexity", False).reason


def test_record_fields_name_the_metric_the_task_uses() -> None:
    fields = objectives.CAUSAL_LM.record_fields([9.0, 4.0, 5.0])
    assert fields == {"final_accuracy": None, "best_accuracy": None, "final_perplexity": 5.0, "best_perplexity": 4.0}
    assert objectives.CLASSIFICATION.record_fields([0.5, 0.9, 0.8])["best_accuracy"] == 0.9


# --- the corpus as a task ----------------------------------------------------------------------


def test_corpus_is_a_causal_lm_task_of_packed_windows() -> None:
    data = load_dataset(CORPUS, seq_len=32)
    assert data.task == "causal-lm" and data.seq_len == 32 and data.tokenizer is not None
    for split in (data.train, data.eval):
        ids = split.features["input_ids"]
        assert ids.shape[1] == 32 and ids.dtype == np.int64 and (split.features["attention_mask"] == 1).all()
        assert np.array_equal(split.labels, ids)
    assert len(data.train) > 4 * len(data.eval)
    assert load_dataset(CORPUS, seq_len=32).fingerprint() == data.fingerprint()


def test_a_model_that_cannot_learn_the_task_is_refused_before_training() -> None:
    from harness.training.job import check_fit

    decoder = load_model(TINY)
    with pytest.raises(ConfigError, match="cannot learn the dataset's text-classification task"):
        check_fit(decoder, load_dataset(DatasetOptions(train_size=16, eval_size=8), seq_len=16), TINY)
    bert = ModelOptions(name="bert_tiny", config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=1024))
    with pytest.raises(ConfigError, match="cannot learn the dataset's causal-lm task"):
        check_fit(load_model(bert), load_dataset(CORPUS, seq_len=16), bert)


# --- decoder checkpoints -----------------------------------------------------------------------


def test_decoder_checkpoint_keeps_the_lm_head_and_tokenizer(tmp_path) -> None:
    """A causal LM's ``.model`` is its base without the LM head: saving that would reload
    a model with a fresh head. The checkpoint must give exactly the same logits."""
    import torch

    from harness import checkpoints
    from harness.generation.tokenizer import corpus_tokenizer

    model = load_model(replace(TINY, config={**TINY.config, "tie_word_embeddings": False}))
    with torch.no_grad():
        model.module.lm_head.weight.mul_(3.0)  # a head that a re-initialised one cannot match
    tokenizer = corpus_tokenizer()
    folder = checkpoints.save(model, tokenizer, "roundtrip", tmp_path, {"test": True})
    loaded = load_model(replace(TINY, config={**TINY.config, "tie_word_embeddings": False}), str(folder))
    ids = torch.randint(1, 700, (2, 16))
    with torch.inference_mode():
        want, got = model.module(input_ids=ids).logits, loaded.module(input_ids=ids).logits
    assert torch.equal(want, got)
    text = "Alice lives in paris . seven plus five is twelve ."
    assert loaded.tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert loaded.tokenizer.eos_token == tokenizer.eos_token and loaded.tokenizer.pad_token_id == tokenizer.pad_token_id


def test_decoders_have_a_train_recipe_for_auto() -> None:
    from harness import checkpoints, compose

    recipe = compose.recipe_for("llama").options
    assert checkpoints.RECIPES["gpt2"] == "llm_train"
    assert recipe.target_perplexity is not None and recipe.target_accuracy is None and recipe.seq_len == 128


# --- the real CLI ---------------------------------------------------------------------------------

QUICK_TRAIN = [
    "model=llama_tiny",
    "scenario.max_steps=60",
    "scenario.batch_size=16",
    "scenario.eval_interval=30",
    "scenario.target_perplexity=100",
    "dataset.train_size=2000",
    "dataset.eval_size=100",
    "launcher.host_lock=false",
]


@pytest.mark.slow
def test_llm_train_reaches_its_perplexity_target(tmp_path) -> None:
    proc = run_cli("+scenario=llm_train", "backend=pytorch", *QUICK_TRAIN, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (rec,) = records_in(tmp_path / "results")
    assert rec["status"] == "ok" and rec["scenario"]["kind"] == "training"
    training = rec["metrics"]["training"]
    assert training["eval_metric"] == "perplexity" and training["final_accuracy"] is None
    uniform = 744  # the embedded tokenizer's vocabulary: what a uniform guess scores
    assert training["final_perplexity"] < 100 < uniform
    assert training["time_to_target_step"] in (30, 60) and training["time_to_target_s"] > 0
    assert [step for step, _ in training["eval_curve"]] == [30, 60]
    losses = [loss for _, loss in training["loss_curve"]]
    assert losses[-1] < losses[0] - 1.0  # from about ln(1024) = 6.9 down
    assert training["tokens_per_s"] == pytest.approx(training["samples_per_s"] * 128)
    assert rec["metrics"]["accuracy"] == {"metric": "perplexity", "value": training["final_perplexity"], "reference": None, "relative": None, "agreement": None}
    folder = Path(training["checkpoint"])
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert json.loads((folder / "harness_checkpoint.json").read_text())["final_perplexity"] == training["final_perplexity"]
    assert any(Path(training["tensorboard"]).iterdir())


@pytest.mark.slow
def test_checkpoint_auto_reuses_what_llm_train_wrote(tmp_path) -> None:
    """The default llm_train recipe on llama_tiny writes the checkpoint that
    ``model.checkpoint=auto`` asks for: a generation run then reuses it, scoring the
    trained model (its perplexity far below the untrained ~1000)."""
    proc = run_cli("+scenario=llm_train", "backend=pytorch", "model=llama_tiny", "launcher.host_lock=false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (trained,) = records_in(tmp_path / "results")
    checkpoint = trained["metrics"]["training"]["checkpoint"]
    assert trained["metrics"]["training"]["time_to_target_s"] is not None  # the recipe's own target
    run = run_cli(
        "+scenario=llm_fp32",
        "backend=onnxruntime",
        "model=llama_tiny",
        "model.checkpoint=auto",
        "scenario.prompt_len=16",
        "scenario.new_tokens=8",
        "scenario.min_iters=2",
        "scenario.min_duration_s=0",
        "scenario.accuracy.limit=2",
        "results_dir=gen",
        "launcher.host_lock=false",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert f"model.checkpoint=auto: reusing {checkpoint}" in run.stdout + run.stderr
    (rec,) = records_in(tmp_path / "gen")
    assert rec["status"] == "ok" and rec["model"]["source"] == f"checkpoint:{checkpoint}"
    accuracy = rec["metrics"]["accuracy"]
    assert accuracy["reference"] < 50 and accuracy["relative"] == pytest.approx(1.0, abs=1e-3)
