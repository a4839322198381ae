"""Accuracy formulas on hand-made arrays, eval batching, the cached fp32 reference, the gate."""

from __future__ import annotations

import numpy as np
import pytest

from harness import accuracy as acc


def test_top1_is_argmax_of_last_axis():
    logits = np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    assert acc.top1(logits).tolist() == [1, 0, 2]


def test_accuracy_hand_computed():
    # 3 of 4 right
    assert acc.accuracy(np.array([1, 0, 1, 1]), np.array([1, 0, 0, 1])) == 0.75


def test_accuracy_rejects_mismatched_or_empty_arrays():
    with pytest.raises(ValueError):
        acc.accuracy(np.array([1, 0]), np.array([1]))
    with pytest.raises(ValueError):
        acc.accuracy(np.array([]), np.array([]))


def test_f1_binary_hand_computed():
    # predictions 1 1 0 0 1 ; labels 1 0 0 1 1 -> tp=2, fp=1, fn=1 -> 2*2 / (4 + 1 + 1) = 2/3
    predictions = np.array([1, 1, 0, 0, 1])
    labels = np.array([1, 0, 0, 1, 1])
    assert acc.f1_binary(predictions, labels) == pytest.approx(2 / 3)


def test_f1_binary_matches_scikit_learn_and_zero_division():
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    for _ in range(20):
        predictions, labels = rng.integers(0, 2, 30), rng.integers(0, 2, 30)
        assert acc.f1_binary(predictions, labels) == pytest.approx(f1_score(labels, predictions, zero_division=0))
    assert acc.f1_binary(np.zeros(4, int), np.zeros(4, int)) == 0.0


def test_agreement_counts_same_predictions_not_correct_ones():
    # both wrong on the last example but they agree on it
    assert acc.agreement(np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0])) == 0.75


def test_relative_is_ratio_and_none_for_zero_reference():
    assert acc.relative(0.9, 0.95) == pytest.approx(0.9 / 0.95)
    assert acc.relative(0.5, 0.0) is None


def test_compare_text_binary_reports_accuracy_f1_relative_agreement():
    labels = np.array([1, 0, 1, 0])
    reference = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # 3/4 right
    run = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])  # 3/4 right, differs on 2
    out = acc.compare(run, reference, labels, "text-classification", 2)
    assert out["metric"] == "accuracy"
    assert out["value"] == 0.75 and out["reference"] == 0.75
    assert out["relative"] == 1.0
    assert out["agreement"] == 0.5
    assert out["f1"] == pytest.approx(2 / 3)  # tp=1 fp=0 fn=1
    assert out["f1_reference"] == pytest.approx(0.8)  # tp=2 fp=1 fn=0
    assert out["samples"] == 4


def test_compare_images_reports_top1_without_f1():
    labels = np.array([2, 1, 0])
    logits = np.eye(3)[[2, 1, 1]]
    out = acc.compare(logits, np.eye(3)[[2, 1, 0]], labels, "image-classification", 10)
    assert out["metric"] == "top1"
    assert out["value"] == pytest.approx(2 / 3) and out["reference"] == 1.0
    assert "f1" not in out


def test_padded_batches_keep_fixed_shape_and_count_real_rows():
    features = {"x": np.arange(10).reshape(5, 2)}
    batches = list(acc.padded_batches(features, 2))
    assert [real for _, real in batches] == [2, 2, 1]
    assert all(b["x"].shape == (2, 2) for b, _ in batches)
    logits = acc.collect(lambda b: b["x"].astype(np.float32), features, 2)
    np.testing.assert_array_equal(logits, features["x"])


def test_gate_passes_above_and_fails_below_threshold():
    result = {"metric": "accuracy", "value": 0.8, "reference": 0.9, "relative": 0.8 / 0.9}
    assert acc.AccuracyGate(None).problem(result) is None
    assert acc.AccuracyGate(0.85).problem(result) is None
    problem = acc.AccuracyGate(0.95).problem(result)
    assert problem and "below the gate 0.95" in problem


def test_reference_logits_are_computed_once_and_cached(tiny_model, tmp_path):
    from harness.data import DatasetOptions, load_dataset

    data = load_dataset(DatasetOptions(train_size=8, eval_size=12), seq_len=16)
    first, cached_first = acc.reference_logits(tiny_model, data, cache_root=str(tmp_path))
    second, cached_second = acc.reference_logits(tiny_model, data, cache_root=str(tmp_path))
    assert (cached_first, cached_second) == (False, True)
    assert first.shape == (12, 2)
    np.testing.assert_array_equal(first, second)
    limited, cached = acc.reference_logits(tiny_model, data, limit=5, cache_root=str(tmp_path))
    assert not cached and limited.shape == (5, 2)
    np.testing.assert_allclose(limited, first[:5], atol=1e-5)
