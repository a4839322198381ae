"""Accuracy beside the fp32 reference, for every inference run.

A speed figure for a compressed model means little without what the compression
cost. So every inference run scores the model it measured on the eval split and puts
that score beside the score of the *same* model in eager fp32 PyTorch on the same
examples (``reference``), their ratio (``relative``) and how often the two agree on
the top-1 class (``agreement``: it catches a model that is as accurate but wrong on
different examples). The fp32 reference logits are computed once per (weights, data)
and cached, so a sweep over backends and recipes pays for them once.

Metrics: text classification reports accuracy (plus F1 of the positive class when
binary); image classification reports top-1. Formulas are unit-tested on hand-made
arrays (``tests/test_accuracy.py``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator, Mapping, Optional

import numpy as np

from harness import cache

Batch = Mapping[str, np.ndarray]


# --- formulas ----------------------------------------------------------------------------


def top1(logits: np.ndarray) -> np.ndarray:
    """Predicted class per row: the arg-max of the last axis."""
    return np.asarray(logits).argmax(axis=-1)


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of predictions equal to the labels."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape or predictions.size == 0:
        raise ValueError(f"need equal, non-empty shapes; got {predictions.shape} and {labels.shape}")
    return float(np.mean(predictions == labels))


def f1_binary(predictions: np.ndarray, labels: np.ndarray, positive: int = 1) -> float:
    """F1 of the ``positive`` class: ``2 tp / (2 tp + fp + fn)``; 0.0 when it is undefined.

    0.0 for "no positive predicted and none present" follows scikit-learn's
    ``zero_division=0`` default, so the two never disagree.
    """
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    tp = int(np.sum((predictions == positive) & (labels == positive)))
    fp = int(np.sum((predictions == positive) & (labels != positive)))
    fn = int(np.sum((predictions != positive) & (labels == positive)))
    denominator = 2 * tp + fp + fn
    return 2 * tp / denominator if denominator else 0.0


def agreement(predictions: np.ndarray, reference_predictions: np.ndarray) -> float:
    """Fraction of examples where both models predict the same class."""
    return accuracy(predictions, reference_predictions)


def relative(value: float, reference: float) -> Optional[float]:
    """``value / reference``; None when the reference is 0 (the ratio means nothing)."""
    return value / reference if reference else None


# --- scores --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Score:
    """One model's score on the eval examples: the headline metric and, if binary, F1."""

    metric: str
    value: float
    f1: Optional[float] = None


def metric_name(task: str) -> str:
    """``accuracy`` for text classification, ``top1`` for image classification."""
    return "top1" if task == "image-classification" else "accuracy"


def score(logits: np.ndarray, labels: np.ndarray, task: str, num_labels: int) -> Score:
    """Score ``logits`` against ``labels`` with the task's metric."""
    predictions = top1(logits)
    f1 = f1_binary(predictions, labels) if num_labels == 2 and task == "text-classification" else None
    return Score(metric_name(task), accuracy(predictions, labels), f1)


def compare(logits: np.ndarray, reference_logits: np.ndarray, labels: np.ndarray, task: str, num_labels: int) -> dict[str, Any]:
    """The ``metrics.accuracy`` record: the run's score beside the fp32 reference's."""
    got = score(logits, labels, task, num_labels)
    ref = score(reference_logits, labels, task, num_labels)
    out: dict[str, Any] = {
        "metric": got.metric,
        "value": got.value,
        "reference": ref.value,
        "relative": relative(got.value, ref.value),
        "agreement": agreement(top1(logits), top1(reference_logits)),
        "samples": int(len(labels)),
    }
    if got.f1 is not None:
        out.update(f1=got.f1, f1_reference=ref.f1)
    return out


# --- running models over the eval split -----------------------------------------------------


def padded_batches(features: Mapping[str, np.ndarray], batch_size: int) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """Fixed-size batches over ``features`` and how many rows of each are real.

    The last batch is padded by repeating its first row, so backends whose sessions
    are specialised to one batch shape (OpenVINO static shapes, TensorRT profiles) can
    score the whole split; the padded rows are dropped afterwards.
    """
    total = len(next(iter(features.values())))
    for start in range(0, total, batch_size):
        index = np.arange(start, min(start + batch_size, total))
        real = len(index)
        if real < batch_size:
            index = np.concatenate([index, np.full(batch_size - real, index[0])])
        yield {name: np.ascontiguousarray(array[index]) for name, array in features.items()}, real


def collect(predict: Callable[[dict[str, np.ndarray]], np.ndarray], features: Mapping[str, np.ndarray], batch_size: int) -> np.ndarray:
    """Logits of ``predict`` over every row of ``features``, in order."""
    parts = [np.asarray(predict(batch))[:real] for batch, real in padded_batches(features, batch_size)]
    return np.concatenate(parts).astype(np.float32)


def eval_features(data: Any, limit: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The eval split's features and labels, the first ``limit`` examples (0 = all)."""
    stop = limit or None
    return {k: v[:stop] for k, v in data.eval.features.items()}, data.eval.labels[:stop]


def session_logits(session: Any, features: Mapping[str, np.ndarray], batch_size: int, output_name: str) -> np.ndarray:
    """Logits of a prepared backend session (the Session contract: load, run, fetch)."""
    return collect(lambda b: session.fetch(session.run(session.load(b)))[output_name], features, batch_size)


def eager_logits(model: Any, features: Mapping[str, np.ndarray], batch_size: int = 32) -> np.ndarray:
    """Logits of a :class:`harness.models.LoadedModel` in eager fp32 PyTorch."""
    from harness.export import eager_outputs

    return collect(lambda b: eager_outputs(model, b), features, batch_size)


def reference_logits(model: Any, data: Any, limit: int = 0, cache_root: Optional[str] = None) -> tuple[np.ndarray, bool]:
    """The fp32 eager logits of ``model`` on the eval split, computed once and cached.

    Keyed by the weights digest and the data fingerprint (which covers tokenization and
    sequence length) plus ``limit``: any change recomputes. The entry is written through
    :mod:`harness.cache` (staged, sealed with checksums, renamed into place); one that
    fails its checksums, does not load or has the wrong shape is rebuilt after a warning,
    so a truncated ``.npy`` never fails a later run. Returns (logits, cached).
    """
    key = cache.content_key("accuracy-reference", model.weights_digest(), data.fingerprint(), limit)
    final = cache.cache_dir(cache_root) / "accuracy" / key
    rows = len(eval_features(data, limit)[1])
    logits, problem = _cached_logits(final, rows)
    if logits is not None:
        return logits, True
    if final.exists():
        cache.discard(final, problem)
    features, _ = eval_features(data, limit)
    logits = eager_logits(model, features)
    with cache.staging("accuracy", key, cache_root) as built:
        np.save(built / "logits.npy", logits)
        (built / "meta.json").write_text(json.dumps({"model": model.name, "source": model.source, "limit": limit, "rows": int(len(logits))}))
        cache.publish(built, final, required=("logits.npy", "meta.json"))
    return logits, False


def _cached_logits(folder: Any, rows: int) -> tuple[Optional[np.ndarray], str]:
    """(the cached logits, "") or (None, why the entry in ``folder`` cannot be used)."""
    if not (folder / "logits.npy").is_file():
        return None, "is incomplete"
    if not (folder / cache.MANIFEST).is_file():
        return None, "has no checksums (an older harness wrote it)"
    if not cache.folder_verified(folder, ("logits.npy", "meta.json")):
        return None, "does not match its checksums (truncated or corrupted)"
    try:
        logits = np.load(folder / "logits.npy")
    except (OSError, ValueError) as exc:
        return None, f"does not load ({type(exc).__name__})"
    if logits.ndim != 2 or logits.shape[0] != rows:
        return None, f"has shape {logits.shape}, not {rows} rows of logits"
    return logits, ""


@dataclass(frozen=True)
class AccuracyGate:
    """The lowest ``relative`` accuracy a run may reach and still be ``ok`` (None = no gate)."""

    min_relative: Optional[float] = None

    def problem(self, result: Mapping[str, Any]) -> Optional[str]:
        """A one-line reason when ``result`` (from :func:`compare`) fails the gate."""
        rel = result.get("relative")
        if self.min_relative is None or rel is None or rel >= self.min_relative:
            return None
        return f"{result['metric']} {result['value']:.4f} is {rel:.4f} of the fp32 reference {result['reference']:.4f}, below the gate {self.min_relative}"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_accuracy(
    session: Any, reference_model: Any, data: Any, batch_size: int, output_name: str, limit: int = 0, cache_root: Optional[str] = None
) -> dict[str, Any]:
    """``metrics.accuracy`` for a prepared session: its eval-split score beside the fp32
    eager score of ``reference_model`` (the unpruned, unquantized model) on the same rows."""
    features, labels = eval_features(data, limit)
    logits = session_logits(session, features, batch_size, output_name)
    reference, cached = reference_logits(reference_model, data, limit, cache_root)
    result = compare(logits, reference, labels, data.task, data.num_labels)
    result["reference_source"] = "eager fp32 pytorch" + (", cached" if cached else "")
    return result
