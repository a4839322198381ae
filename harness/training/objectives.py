"""What a training run optimises and how it is evaluated, per task.

The training loop, the record and ``model.checkpoint=auto`` are the same for every
task; what differs is the loss, the evaluation metric and which direction is better:

- classification (``text-classification``, ``image-classification``): cross-entropy
  against the class label, top-1 **accuracy** on the eval split (higher is better),
  target ``scenario.target_accuracy``;
- causal language modelling (``causal-lm``, decoder LLMs on ``dataset=corpus``):
  next-token cross-entropy (position t predicts token t + 1), eval **perplexity**
  ``exp(mean next-token negative log-likelihood)`` over every eval token (lower is
  better), target ``scenario.target_perplexity``.

The objective is picked by the data's task, so a scenario config says nothing
task-specific beyond its target: ``llm_train`` is an ordinary ``kind: training`` recipe
and every strategy of the training machinery applies to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

import numpy as np

if TYPE_CHECKING:
    from harness.backend import TrainingSession
    from harness.data import TaskData
    from harness.training.options import TrainingOptions
    from harness.training.plan import LossFn


def causal_lm_loss(logits: Any, inputs: Mapping[str, Any]) -> Any:
    """Mean next-token cross-entropy: ``logits[:, t]`` scored against ``labels[:, t + 1]``
    over every position whose target is a real token (``attention_mask`` 1)."""
    import torch.nn.functional as F

    labels = inputs["labels"][:, 1:]
    mask = inputs.get("attention_mask")
    if mask is not None:
        labels = labels.masked_fill(mask[:, 1:] == 0, -100)  # cross_entropy's ignore_index
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1))


def accuracy(session: "TrainingSession", data: "TaskData", batch_size: int) -> float:
    """Top-1 accuracy of the session's model on the whole eval split."""
    correct = 0
    for batch in data.batches("eval", batch_size):
        labels = batch.pop("labels")
        logits = session.predict(session.load(batch))
        correct += int((np.asarray(logits).argmax(axis=-1) == labels).sum())
    return correct / len(data.eval)


def perplexity(session: "TrainingSession", data: "TaskData", batch_size: int) -> float:
    """``exp(-mean log p(next token))`` over every eval window's predicted tokens.

    Log-probabilities in float64 one window at a time, so a large vocabulary (GPT-2's
    50257) does not multiply the logits' memory by the batch.
    """
    from harness.generation.loop import next_token_logprobs

    total, count = 0.0, 0
    for batch in data.batches("eval", batch_size):
        batch.pop("labels")
        logits = np.asarray(session.predict(session.load(batch)))
        for row_logits, row_ids, row_mask in zip(logits, batch["input_ids"], batch["attention_mask"]):
            logprobs = next_token_logprobs(row_logits[None], row_ids[None])[0]
            real = row_mask[1:].astype(bool)
            total += float(logprobs[real].sum())
            count += int(real.sum())
    return float(np.exp(-total / count))


@dataclass(frozen=True)
class Objective:
    """One task's loss (None: the session's label cross-entropy), eval metric and target."""

    metric: str
    higher_is_better: bool
    loss: Optional["LossFn"]
    evaluate: Callable[["TrainingSession", "TaskData", int], float]

    def target(self, options: "TrainingOptions") -> Optional[float]:
        """The option holding this metric's target: ``target_accuracy`` or ``target_perplexity``."""
        return getattr(options, f"target_{self.metric}")

    def record_fields(self, values: list[float]) -> dict[str, Optional[float]]:
        """``final_<metric>`` and ``best_<metric>`` of the evaluations' ``values`` for every
        metric a training record carries (None for the metrics this task does not use)."""
        best = (max(values) if self.higher_is_better else min(values)) if values else None
        final = values[-1] if values else None
        return {f"{kind}_{metric}": (value if metric == self.metric else None) for metric in METRICS for kind, value in (("final", final), ("best", best))}


#: Every eval metric a training record may carry.
METRICS = ("accuracy", "perplexity")


CLASSIFICATION = Objective("accuracy", True, None, accuracy)
CAUSAL_LM = Objective("perplexity", False, causal_lm_loss, perplexity)


def of(task: str) -> Objective:
    """The objective of a :class:`~harness.data.TaskData` task name."""
    return CAUSAL_LM if task == "causal-lm" else CLASSIFICATION
