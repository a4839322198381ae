"""Generation building blocks: corpus, tokenizer, decoder facts, loop helpers, quality formulas."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from harness.errors import ConfigError, Unsupported
from harness.generation import corpus, decoders, quality
from harness.generation.loop import TokenPicker, left_pad, next_token_logprobs, positions
from harness.generation.session import Decoding


# --- corpus and tokenizer ------------------------------------------------------------------


def test_corpus_is_deterministic_and_eval_is_unseen() -> None:
    first, second = corpus.build_corpus(300, 40, seed=0), corpus.build_corpus(300, 40, seed=0)
    assert first == second and first.fingerprint() == second.fingerprint()
    assert len(first.train) == 300 and len(first.eval) == 40
    assert not set(first.train) & set(first.eval)
    assert corpus.build_corpus(300, 40, seed=1).fingerprint() != first.fingerprint()


def test_corpus_facts_agree_with_its_world() -> None:
    """Every 'X lives in Y' sentence states the one home the world gave X: learnable facts."""
    homes = {p.name: p.city for p in corpus.world(0)}
    text = " ".join(corpus.build_corpus(400, 20, seed=0).train)
    found = re.findall(r"(\w+) lives in (\w+) \.", text)
    assert len(found) > 50
    assert all(homes[name] == city for name, city in found)


def test_corpus_refuses_empty_splits_in_one_line() -> None:
    with pytest.raises(ConfigError, match="at least one train and one eval"):
        corpus.build_corpus(0, 5)


def test_tokenizer_is_cached_and_round_trips(isolated_cache) -> None:
    from harness.generation.tokenizer import corpus_tokenizer

    tokenizer = corpus_tokenizer()
    assert list((isolated_cache / "tokenizers").glob("*/tokenizer.json"))
    again = corpus_tokenizer()
    text = corpus.build_corpus(5, 1).eval[0]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert again(text, add_special_tokens=False)["input_ids"] == ids
    assert tokenizer.decode(ids) == text
    assert 300 < len(tokenizer) <= 1024  # fits llama_tiny's and llama_small's vocabulary
    assert tokenizer.eos_token == corpus.END_OF_TEXT == tokenizer.pad_token


def test_token_stream_and_windows() -> None:
    from harness.generation.tokenizer import corpus_tokenizer

    tokenizer = corpus_tokenizer()
    texts = ["Alice lives in paris .", "one two three ."]
    stream = corpus.token_stream(tokenizer, texts)
    eos = tokenizer.eos_token_id
    assert list(stream).count(eos) == 2 and stream[-1] == eos
    win = corpus.windows(np.arange(10), 3, 5)
    assert win.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]  # fewer when the stream is short
    with pytest.raises(ConfigError, match="fewer than one window"):
        corpus.windows(np.arange(2), 3, 1)


def test_corpus_dataset_is_a_causal_lm_task_not_a_classification_one() -> None:
    """Loaded as a dataset, the corpus is a causal-LM task (llm_train); a classifier paired
    with it is refused before anything runs (preflight), and a classification dataset is
    no corpus for generation."""
    from types import SimpleNamespace

    from harness.data import DatasetOptions, load_dataset
    from harness.models import ModelOptions
    from harness.preflight import check_dataset

    data = load_dataset(DatasetOptions(name="corpus", kind="corpus", train_size=10, eval_size=5), seq_len=16)
    assert data.task == "causal-lm" and data.num_labels == 0
    bert_on_corpus = SimpleNamespace(dataset=DatasetOptions(name="corpus", kind="corpus"), model=ModelOptions())
    with pytest.raises(ConfigError, match="model.family=bert does text-classification but dataset 'corpus' is causal-lm"):
        check_dataset(bert_on_corpus)
    llama_on_sentiment = SimpleNamespace(dataset=DatasetOptions(), model=ModelOptions(name="llama_tiny", family="llama"))
    with pytest.raises(ConfigError, match="does causal-lm but dataset 'sentiment'") as refused:
        check_dataset(llama_on_sentiment)
    assert "fix: dataset=corpus" in refused.value.one_line()
    with pytest.raises(ConfigError) as caught:
        corpus.load_corpus(DatasetOptions())
    assert "is not a text corpus (fix: use dataset=corpus" in caught.value.one_line()


# --- decoder facts -------------------------------------------------------------------------


def test_decoder_families_are_model_families() -> None:
    from harness.models import FAMILIES

    assert set(decoders.DECODER_FAMILIES) == {"llama", "gpt2"} and set(decoders.DECODER_FAMILIES) <= set(FAMILIES)
    assert decoders.is_decoder("llama") and not decoders.is_decoder("bert")


def test_kv_layout_and_bytes_by_hand() -> None:
    llama = decoders.kv_layout({"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "hidden_size": 64})
    assert llama == decoders.KVLayout(layers=2, kv_heads=2, head_dim=16)
    # 2 (k, v) x 2 layers x batch 3 x 2 kv heads x 10 tokens x 16 dims x 4 bytes
    assert llama.bytes(batch=3, tokens=10, bytes_per_element=4) == 2 * 2 * 3 * 2 * 10 * 16 * 4 == 15360
    assert decoders.kv_layout({"n_layer": 12, "n_head": 12, "n_embd": 768}) == decoders.KVLayout(12, 12, 64)
    assert decoders.kv_layout(
        {"num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 2048, "head_dim": 64}
    ) == decoders.KVLayout(16, 8, 64)
    assert decoders.max_positions({"n_positions": 1024}) == 1024 and decoders.max_positions({}) is None


@pytest.mark.parametrize(
    "name, params",
    [
        ("llama_tiny", 158_016),
        ("llama_small", 25_698_816),  # tens of millions
        ("llama_1b", 1_235_814_400),  # exactly Llama-3.2-1B's count
        ("gpt2", 124_439_808),  # exactly GPT-2 small's count
    ],
)
def test_model_configs_build_the_shapes_they_claim(name, params) -> None:
    """Each config builds its family's model (on the meta device: no memory) with the claimed size."""
    from importlib import resources

    import torch
    import yaml

    spec = yaml.safe_load((resources.files("harness.conf") / "model" / f"{name}.yaml").read_text())
    with torch.device("meta"):
        model = decoders.DECODER_FAMILIES[spec["family"]].build(spec["config"])
    assert sum(p.numel() for p in model.parameters()) == params


def test_a_saved_causal_lm_folder_loads_with_its_tokenizer(llama_source) -> None:
    from harness.models import ModelOptions, load_model

    folder = llama_source.folder()
    assert llama_source.folder() == folder  # cached by weights
    loaded = load_model(ModelOptions(name="mine", family="llama", path=str(folder)))
    assert loaded.source == f"checkpoint:{folder}" and loaded.tokenizer is not None
    assert loaded.weights_digest() == llama_source.weights_digest
    assert loaded.tokenizer("Alice lives")["input_ids"] == llama_source.tokenizer("Alice lives")["input_ids"]


# --- loop helpers --------------------------------------------------------------------------


def test_left_pad_and_positions_by_hand() -> None:
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert positions(mask, 3).tolist() == [[0, 1, 2], [0, 0, 0]]
    grown = np.concatenate([mask, np.ones((2, 1), dtype=np.int64)], axis=1)
    assert positions(grown, 1).tolist() == [[3], [1]]
    with pytest.raises(ValueError):
        left_pad([[1], []])


def test_token_picker_greedy_and_seeded_sampling() -> None:
    logits = np.array([[0.0, 3.0, 1.0, 2.0], [5.0, 1.0, 0.0, 0.0]])
    assert TokenPicker(Decoding()).pick(logits).tolist() == [1, 0]
    sample = Decoding("sample", temperature=1.0, seed=7)
    draws = [TokenPicker(sample).pick(np.zeros((1, 50))).tolist() for _ in range(2)]
    assert draws[0] == draws[1]  # same seed, same draw
    assert TokenPicker(Decoding("sample", top_k=1, seed=3)).pick(logits).tolist() == [1, 0]
    assert TokenPicker(Decoding("sample", top_p=0.01, seed=3)).pick(logits).tolist() == [1, 0]
    with pytest.raises(ValueError):
        Decoding("beam")


def test_next_token_logprobs_and_perplexity_by_hand() -> None:
    # Uniform logits over 4 tokens: every next token has log p = -ln 4, perplexity 4.
    logprobs = next_token_logprobs(np.zeros((1, 3, 4)), np.array([[0, 1, 2]]))
    assert logprobs.shape == (1, 2) and np.allclose(logprobs, -math.log(4))
    assert quality.perplexity(logprobs) == pytest.approx(4.0)
    # log p = [ln 1/2, ln 1/8]: perplexity exp((ln 2 + ln 8) / 2) = 4.
    assert quality.perplexity([math.log(0.5), math.log(0.125)]) == pytest.approx(4.0)
    # Two tokens with logits (ln 3, 0): p = 3/4 and 1/4.
    two = next_token_logprobs(np.array([[[math.log(3), 0.0], [0.0, 0.0]]]), np.array([[0, 1]]))
    assert two[0, 0] == pytest.approx(math.log(0.25))


def test_agreement_formulas_by_hand() -> None:
    tokens, reference = [[1, 2, 3], [4, 5, 6]], [[1, 2, 0], [4, 0, 6]]
    assert quality.agreement(tokens, reference) == pytest.approx(4 / 6)
    assert quality.prefix_agreement(tokens, reference) == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert quality.prefix_agreement(tokens, tokens) == 1.0
    with pytest.raises(ValueError):
        quality.agreement([[1]], [[1, 2]])


def test_accuracy_gate_reads_the_perplexity_ratio() -> None:
    from harness.accuracy import AccuracyGate

    result = {"metric": "perplexity", "value": 5.0, "reference": 4.0, "relative": 0.8}
    assert "below the gate 0.9" in AccuracyGate(0.9).problem(result)
    assert AccuracyGate(0.75).problem(result) is None and AccuracyGate(None).problem(result) is None


# --- options and contract ------------------------------------------------------------------


def test_generation_options_are_validated_with_the_key() -> None:
    from harness.config import typed
    from harness.scenarios.generation import GenerationOptions

    assert typed(GenerationOptions, {"prompt_len": 32, "seq_len": 32}, "scenario").prompt_len == 32
    with pytest.raises(ConfigError, match="scenario.seq_len"):
        typed(GenerationOptions, {"prompt_len": 32, "seq_len": 64}, "scenario")
    with pytest.raises(ConfigError, match="scenario.decoding"):
        typed(GenerationOptions, {"decoding": "beam"}, "scenario")
    with pytest.raises(ConfigError, match="scenario.sampling.top_p"):
        typed(GenerationOptions, {"sampling": {"top_p": 0}}, "scenario")


def test_default_prepare_generation_refuses_in_one_line() -> None:
    from harness.backend import Availability, Backend, Capabilities

    class Plain(Backend):
        name = "plain"
        options_type = dict

        @classmethod
        def probe(cls, options):  # pragma: no cover - not called
            return Availability(True)

        def capabilities(self):
            return Capabilities()

        def prepare(self, artifact, precision):  # pragma: no cover - not called
            raise NotImplementedError

    with pytest.raises(Unsupported) as caught:
        Plain({}).prepare_generation(None, None)
    line = caught.value.one_line()
    assert "backend 'plain' does not run text generation" in line and "\n" not in line


def test_builtin_backends_declare_generation() -> None:
    from harness.backends.onnxruntime import OnnxRuntimeBackend, OnnxRuntimeOptions
    from harness.backends.pytorch import PyTorchBackend, PyTorchOptions

    assert PyTorchBackend(PyTorchOptions()).capabilities().generation
    assert OnnxRuntimeBackend(OnnxRuntimeOptions()).capabilities().generation
