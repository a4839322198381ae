"""Seeded workloads: fixed and sampled lengths, exact token counts, reproducibility."""

import numpy as np
import pytest

from harness.errors import ConfigError
from harness.serving.workload import PromptPool, WorkloadOptions, build_requests, sample_lengths

TEXTS = ["alpha beta gamma delta", "epsilon zeta eta theta iota", "kappa lambda mu"]


class CharTokenizer:
    """One token per character: exact counts are easy to check by hand."""

    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


def test_fixed_and_sampled_lengths():
    rng = np.random.default_rng(0)
    assert sample_lengths(7, 0.0, 1, 0, 4, rng) == [7, 7, 7, 7]
    drawn = sample_lengths(50, 20.0, 10, 60, 2000, np.random.default_rng(1))
    assert min(drawn) >= 10 and max(drawn) <= 60
    # E[clip(N(50, 20), 10, 60)] = 10 Phi(-2) + 60 (1 - Phi(0.5)) + 50 (Phi(0.5) - Phi(-2)) + 20 (phi(-2) - phi(0.5))
    #                          = 0.2275 + 18.5124 + 33.4355 - 5.9616 = 46.21 (standard error of 2000 draws ~0.3)
    assert np.mean(drawn) == pytest.approx(46.21, abs=1.0)


def test_corpus_prompts_have_exact_token_counts_and_ids():
    pool = PromptPool(TEXTS, CharTokenizer())
    options = WorkloadOptions(prompt_tokens=9, output_tokens=3, seed=4)
    requests, described = build_requests(pool, options, 5)
    assert [len(r.prompt_ids) for r in requests] == [9] * 5
    assert all(CharTokenizer().encode(r.prompt) == list(r.prompt_ids) for r in requests)
    assert all(r.max_tokens == 3 and r.ignore_eos for r in requests)
    assert described["prompt_tokens"] == {"mean": 9.0, "min": 9, "max": 9}
    assert len({r.prompt for r in requests}) > 1  # seeded offsets: prompts differ


def test_same_seed_same_requests_other_seed_other_requests():
    pool = PromptPool(TEXTS, CharTokenizer())
    options = WorkloadOptions(prompt_tokens=6, prompt_tokens_stdev=3, output_tokens=4, output_tokens_stdev=2, seed=11)
    first, _ = build_requests(pool, options, 8)
    again, _ = build_requests(pool, options, 8)
    other, _ = build_requests(pool, WorkloadOptions(prompt_tokens=6, prompt_tokens_stdev=3, seed=12), 8)
    assert first == again and first != other


def test_words_without_a_tokenizer_and_whole_eval_texts():
    pool = PromptPool(TEXTS, None)
    requests, described = build_requests(pool, WorkloadOptions(prompt_tokens=5), 3)
    assert [len(r.prompt.split()) for r in requests] == [5, 5, 5] and requests[0].prompt_ids == ()
    assert described["tokenizer"] == "none (whitespace words)"
    whole, _ = build_requests(PromptPool(TEXTS, CharTokenizer()), WorkloadOptions(source="eval_split", prompt_tokens_max=10), 3)
    assert sorted(len(r.prompt_ids) for r in whole) == [10, 10, 10]  # every text is longer than the cap
    assert {r.prompt for r in whole} <= {t[:10] for t in TEXTS}


def test_bad_options_name_the_key():
    from harness.config import typed

    with pytest.raises(ConfigError, match="workload.prompt_tokens_max"):
        typed(WorkloadOptions, {"prompt_tokens_min": 5, "prompt_tokens_max": 2}, "scenario")
    with pytest.raises(ConfigError, match="workload.source"):
        typed(WorkloadOptions, {"source": "nope"}, "scenario")
