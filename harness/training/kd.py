"""Knowledge-distillation loss (Hinton et al., 2015).

``alpha x T^2 x KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) x CE(student, labels)``.
The ``T^2`` factor keeps the soft term's gradient scale independent of ``T``, so
``alpha`` means the same thing at any temperature. The KL is averaged over the batch
(``reduction="batchmean"``, the mathematically correct mean for KL).
"""

from __future__ import annotations

from typing import Any, Mapping


def kd_loss(student_logits: Any, teacher_logits: Any, labels: Any, temperature: float, alpha: float) -> Any:
    """The distillation loss as a scalar tensor (see the module docstring)."""
    import torch.nn.functional as F

    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=-1), F.softmax(teacher_logits / temperature, dim=-1), reduction="batchmean")
    hard = F.cross_entropy(student_logits, labels)
    return alpha * temperature**2 * soft + (1.0 - alpha) * hard


class KDLoss:
    """A plan loss (``loss(logits, inputs)``) reading ``inputs["teacher_logits"]`` and ``inputs["labels"]``."""

    def __init__(self, temperature: float, alpha: float) -> None:
        self.temperature = temperature
        self.alpha = alpha

    def __call__(self, logits: Any, inputs: Mapping[str, Any]) -> Any:
        return kd_loss(logits, inputs["teacher_logits"].float(), inputs["labels"], self.temperature, self.alpha)
