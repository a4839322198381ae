"""The training session every backend that trains a torch module shares.

pytorch and torch_xla train the same ``torch.nn.Module`` with the same optimizer,
schedule, loss, gradient accumulation and clipping; they differ in the device, the
mixed-precision context, how a step is made done on the device and (pytorch only) DDP
and the fp16 grad scaler. :class:`TorchTrainingSession` holds the shared part once, so
a loss curve differs between backends only by what really differs, and a plugin for
another torch device subclasses it instead of copying a step loop.

torch is imported inside the methods, so importing this module costs nothing.
"""

from __future__ import annotations

import abc
import contextlib
from typing import Any

import numpy as np

from harness.backend import TrainingSession
from harness.training.plan import TrainingPlan


def label_cross_entropy(logits: Any, inputs: dict[str, Any]) -> Any:
    """The loss when the plan names none: cross-entropy of the logits against ``labels``."""
    import torch.nn.functional as F

    return F.cross_entropy(logits, inputs["labels"])


def output_logits(output: Any) -> Any:
    """The logits tensor of a forward pass: the harness's wrappers return it, a bare
    transformers model (decoders are trained unwrapped) returns an output with ``.logits``."""
    return getattr(output, "logits", output)


class TorchTrainingSession(TrainingSession):
    """A torch module trained in place with the plan's optimizer, schedule and loss.

    ``train_step`` runs once per micro-batch; every ``grad_accum_steps``-th call clips,
    steps the optimizer (through :attr:`scaler` when a subclass sets one) and the
    schedule. Gradient sync of a wrapper with ``no_sync`` (DDP) is skipped on the
    micro-batches that do not update. Subclasses say how to autocast
    (:meth:`_autocast`) and how a step ends on their device (:meth:`_finish_step`).
    """

    #: The fp16 loss scaler (``torch.amp.GradScaler``); None steps the plain loss.
    scaler: Any = None

    def __init__(self, module: Any, plan: TrainingPlan, device: Any) -> None:
        from harness.training.optim import build_optimizer, build_schedule

        self.plan = plan
        # Placed (and, by a subclass, spread over the processes) before the optimizer is
        # built: its state lives on the device, and FSDP/TP replace the parameters.
        #: ``module`` holds the parameters the optimizer updates; ``model`` is what steps
        #: call: the module or a wrapper of it (DDP, torch.compile).
        self.module, self.model = self._spread(module.to(device).train())
        self.optimizer = build_optimizer(self.module, plan)
        self.scheduler = build_schedule(self.optimizer, plan)
        self.loss_fn = plan.loss or label_cross_entropy
        self.micro_batches = 0

    @abc.abstractmethod
    def _autocast(self) -> Any:
        """The mixed-precision context forward passes run in (a null context for fp32)."""

    def _sync_device(self) -> None:
        """Wait for the queued device work where copying to the host would not (XLA's lazy graph)."""

    def _finish_step(self) -> None:
        """After a step's work is queued: end it on the device (or mark its end for the timer)."""
        self._sync_device()

    def _features(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return {name: inputs[name] for name in self.plan.input_names}

    def _spread(self, module: Any) -> tuple[Any, Any]:
        """``(module the optimizer updates, model steps call)``; a subclass shards or wraps here."""
        return module, module

    def _gradient_sync(self, update: bool) -> Any:
        """The context of a micro-batch's backward: DDP's ``no_sync`` on the ones that do not update."""
        no_sync = getattr(self.model, "no_sync", None)
        return contextlib.nullcontext() if update or no_sync is None else no_sync()

    def _observe(self) -> Any:
        """The context a whole micro-batch (forward, backward, update) runs in: a subclass
        measures its memory or profiles it here."""
        return contextlib.nullcontext()

    def _forward_backward(self, inputs: dict[str, Any], update: bool) -> Any:
        """Forward and backward of one micro-batch; returns the (detached) loss tensor."""
        with self._gradient_sync(update):
            with self._autocast():
                logits = output_logits(self.model(**self._features(inputs)))
            loss = self.loss_fn(logits.float(), inputs)
            scaled = loss / self.plan.grad_accum_steps
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        return loss.detach()

    def train_step(self, inputs: dict[str, Any]) -> float:
        self.micro_batches += 1
        update = self.micro_batches % self.plan.grad_accum_steps == 0
        with self._observe():
            loss = self._forward_backward(inputs, update)
            if update:
                self._update()
            self._finish_step()
        return float(loss.cpu())

    def _clip(self) -> None:
        """Clip the global gradient norm to ``grad_clip`` (a subclass clips sharded gradients)."""
        import torch

        torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.plan.grad_clip)

    def _before_zero_grad(self) -> None:
        """Called with the update's gradients still in place (a subclass measures them)."""

    def _update(self) -> None:
        """Clip (the unscaled gradients), step the optimizer, clear the gradients, step the schedule."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.plan.grad_clip > 0:
            self._clip()
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self._before_zero_grad()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()

    def predict(self, inputs: dict[str, Any]) -> np.ndarray:
        """Logits in eval mode (no dropout) on the unwrapped module, then back to train mode."""
        import torch

        self.module.eval()
        try:
            with torch.no_grad(), self._autocast():
                logits = output_logits(self.module(**self._features(inputs)))
            self._sync_device()
            return logits.detach().cpu().float().numpy()
        finally:
            self.module.train()

    @property
    def lr(self) -> float:
        """The learning rate the next update will use (for the loss-curve logs)."""
        return float(self.scheduler.get_last_lr()[0])
