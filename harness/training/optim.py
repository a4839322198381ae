"""Optimizers and learning-rate schedules from the plan, with the real libraries.

Optimizers are ``torch.optim`` classes; schedules are ``transformers.get_scheduler``
(linear warm-up then constant, linear decay to 0, or half-cosine decay to 0), so the
curves match what users get from the Hugging Face Trainer. Weight decay skips biases
and normalisation weights (every parameter with fewer than 2 dimensions), the usual
practice for transformers and ResNets alike.
"""

from __future__ import annotations

from typing import Any

from harness.training.plan import TrainingPlan

#: Our schedule names -> transformers.get_scheduler names (all with linear warm-up).
TRANSFORMERS_SCHEDULES = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}


def parameter_groups(module: Any, weight_decay: float) -> list[dict[str, Any]]:
    """Matrices and kernels decay, biases and norm weights do not.

    Parameters are further grouped by kind: plain tensors apart from ``DTensor`` shards,
    and DTensors by mesh. The optimizers' fused multi-tensor updates run one group at a
    time and cannot mix them (tensor parallelism leaves embeddings and norms plain;
    fsdp+tp puts blocks on a 2-D mesh and the rest on the data-parallel one).
    """
    groups: dict[tuple[bool, Any], list[Any]] = {}
    for parameter in module.parameters():
        if parameter.requires_grad:
            mesh = getattr(parameter, "device_mesh", None)  # DTensor only
            groups.setdefault((parameter.ndim >= 2, None if mesh is None else id(mesh)), []).append(parameter)
    return [
        {"params": params, "weight_decay": weight_decay if decays else 0.0}
        for (decays, _), params in sorted(groups.items(), key=lambda kv: (not kv[0][0], kv[0][1] is not None))
    ]


def build_optimizer(module: Any, plan: TrainingPlan) -> Any:
    """The ``torch.optim`` optimizer the plan names, over ``module``'s trainable parameters."""
    import torch

    groups = parameter_groups(module, plan.weight_decay)
    if plan.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=plan.lr)
    if plan.optimizer == "adam":
        return torch.optim.Adam(groups, lr=plan.lr)
    if plan.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=plan.lr, momentum=plan.momentum, nesterov=plan.nesterov)
    if plan.optimizer == "adagrad":
        return torch.optim.Adagrad(groups, lr=plan.lr)
    if plan.optimizer == "adadelta":
        return torch.optim.Adadelta(groups, lr=plan.lr)
    raise ValueError(f"unknown optimizer {plan.optimizer!r}")  # options validation prevents this


def build_schedule(optimizer: Any, plan: TrainingPlan) -> Any:
    """A ``torch.optim.lr_scheduler.LambdaLR`` from ``transformers.get_scheduler``, stepped once per update."""
    from transformers import get_scheduler

    return get_scheduler(TRANSFORMERS_SCHEDULES[plan.schedule], optimizer, num_warmup_steps=plan.warmup_steps, num_training_steps=max(plan.total_steps, 1))
