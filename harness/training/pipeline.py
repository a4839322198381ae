"""Pipeline parallelism (``strategy=pp``) with ``torch.distributed.pipelining``.

Each rank keeps one stage: a consecutive, equal slice of the model's blocks, plus the
embedding on the first stage and the head on the last (an adapter per task-model class
in :mod:`harness.training.architectures` says which submodules those are and how to
call them). The other stages' parameters are freed on this rank, so per-rank memory is
what a stage costs. A step is one ``schedule.step`` over ``microbatches`` micro-batches
(``Schedule1F1B`` or ``ScheduleGPipe``); between stages travel the hidden states and
the 2-D attention mask.

Tied input/output embeddings (Llama's ``tie_word_embeddings``) are held by the first and
the last stage; their gradients are summed between the two before each update, so the
copies stay equal. The loss lives on the last stage; it is all-reduced over the stages inside the step
(one scalar), so every rank reports the pipeline's loss. Gradients: the loss of each
micro-batch is divided by ``microbatches x grad_accum_steps`` (``scale_grads=False``), so
accumulating several steps' gradients stays exact. Evaluation runs the stages forward
one after another with point-to-point sends (every eval batch size works, the last
partial batch included), and the last stage broadcasts the logits.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

from harness.training.parallel import Strategy, checkpoint_blocks, clip_grad_norm, join_process_group
from harness.training.plan import TrainingPlan


def _stage_module_class() -> type:
    import torch

    class StageModule(torch.nn.Module):
        """One pipeline stage: ``(input_ids, mask)`` or ``(hidden, mask)`` in;
        ``(hidden, mask)`` out, or the logits on the last stage."""

        def __init__(self, adapter: Any, parts: Mapping[str, Any], blocks: list[Any], config: Any, first: bool, last: bool) -> None:
            super().__init__()
            self.adapter, self.config, self.first, self.last = adapter, config, first, last
            self.parts = torch.nn.ModuleDict({name.replace(".", "__"): part for name, part in parts.items()})
            self.named = dict(parts)  # dotted names, as the adapter knows them
            self.blocks = torch.nn.ModuleList(blocks)

        def forward(self, hidden: Any, mask: Any) -> Any:
            if self.first:
                hidden = self.adapter.embed(self.named, hidden)
            context = self.adapter.context(self.named, self.config, hidden, mask)
            for block in self.blocks:
                out = block(hidden, **context)
                hidden = out[0] if isinstance(out, tuple) else out
            if self.last:
                return self.adapter.head(self.named, hidden)
            return hidden, mask

    return StageModule


class PipelineParallel(Strategy):
    """``pp``: this rank's stage of the model, run on a ``torch.distributed.pipelining`` schedule."""

    name = "pp"
    collective_eval = True

    def __init__(self, plan: TrainingPlan, device: str) -> None:
        super().__init__(plan, device)
        self.stages = plan.world.size
        self.index = plan.world.rank
        self.first = self.index == 0
        self.last = self.index == self.stages - 1
        self.stage_module: Any = None
        self.schedule: Any = None
        self.fqns: dict[int, list[str]] = {}
        self.tied: list[Any] = []
        self.tied_group: Any = None

    def setup(self, module: Any) -> tuple[Any, Any]:
        import torch
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

        from harness.training.architectures import describe, find_blocks, hf_model, pipeline_adapter, split_stages

        adapter = pipeline_adapter(module)
        self.owns_group = join_process_group(self.plan, self.cuda)
        model = hf_model(module)
        _, blocks = find_blocks(model)
        ranges = split_stages(len(blocks), self.stages, describe(module))
        keep = [*adapter.shared, *(adapter.first if self.first else ()), *(adapter.last if self.last else ())]
        parts = {name: model.get_submodule(name) for name in keep}
        stage_blocks = [blocks[i] for i in ranges[self.index]]
        tied = self._tied(model, adapter, blocks, ranges)  # the same on every rank
        if tied:
            import torch.distributed as dist

            self.tied_group = dist.new_group([0, self.stages - 1])  # every rank takes part in creating it
        if self.plan.parallel.activation_checkpointing:
            checkpoint_blocks(stage_blocks)
        self.stage_module = _stage_module_class()(adapter, parts, stage_blocks, model.config, self.first, self.last)
        kept = {id(p) for p in self.stage_module.parameters()}
        self.tied = [p for p in self.stage_module.parameters() if id(p) in tied]
        for name, p in module.named_parameters(remove_duplicate=False):  # a tied weight under all its names
            if id(p) in kept:
                self.fqns.setdefault(id(p), []).append(name)
        with torch.no_grad():  # the other stages' weights: freed on this rank
            for p in module.parameters():
                if id(p) not in kept:
                    p.data = torch.empty(0, dtype=p.dtype, device=p.device)
        stage = PipelineStage(self.stage_module, self.index, self.stages, torch.device(self.device))
        schedule = {"1f1b": Schedule1F1B, "gpipe": ScheduleGPipe}[self.plan.parallel.pipeline_schedule]
        self.schedule = schedule(stage, n_microbatches=self.plan.parallel.microbatches, loss_fn=self._loss, scale_grads=False)
        return self.stage_module, self.stage_module

    @staticmethod
    def _tied(model: Any, adapter: Any, blocks: Any, ranges: list[range]) -> set[int]:
        """Parameters the first and the last stage both hold (tied input/output embeddings)."""

        def ids(names: tuple[str, ...], block_range: range) -> set[int]:
            found = {id(p) for name in names for p in model.get_submodule(name).parameters()}
            return found | {id(p) for i in block_range for p in blocks[i].parameters()}

        return ids(adapter.first, ranges[0]) & ids(adapter.last, ranges[-1])

    def _sync_tied_gradients(self) -> None:
        """Tied weights live on the first and the last stage, each with its own part of the
        gradient: summed over the two (as Megatron's embedding group does), so both copies
        take the same update and stay equal."""
        import torch.distributed as dist

        for parameter in self.tied:
            if parameter.grad is not None:
                dist.all_reduce(parameter.grad, group=self.tied_group)

    @property
    def _loss_divisor(self) -> int:
        return self.plan.parallel.microbatches * self.plan.grad_accum_steps

    def _loss(self, output: Any, target: Any) -> Any:
        from harness.training.torch_session import label_cross_entropy

        return (self.plan.loss or label_cross_entropy)(output.float(), {"labels": target}) / self._loss_divisor

    def forward_backward(self, inputs: dict[str, Any], update: bool, autocast: Any) -> Any:
        """One schedule step over the micro-batches; the mean micro-batch loss on every rank."""
        import torch
        import torch.distributed as dist

        losses: list[Any] = []
        features = tuple(inputs[name] for name in self.plan.input_names)
        target = inputs["labels"] if self.last else None
        with autocast:
            if self.first:
                self.schedule.step(*features, target=target, losses=losses, return_outputs=False)
            else:
                self.schedule.step(target=target, losses=losses, return_outputs=False)
        if update and self.tied:
            self._sync_tied_gradients()
        if self.last:  # the schedule's per-micro-batch values of _loss, scaled back to the mean loss
            loss = torch.stack([value.detach() for value in losses]).sum() * self.plan.grad_accum_steps
        else:
            loss = torch.zeros((), device=self.device)
        dist.all_reduce(loss)  # only the last stage contributes
        return loss

    def clip(self, module: Any, max_norm: float) -> None:
        # A tied weight's (summed) gradient is on two stages: its norm counts once, on the first.
        counted_elsewhere = {id(p) for p in self.tied} if not self.first else set()
        clip_grad_norm(module.parameters(), max_norm, group=dist_world(), exclude_from_norm=counted_elsewhere)

    def predict(self, inputs: dict[str, Any], autocast: Any) -> Any:
        """The stages' forward passes in turn (point-to-point), logits broadcast from the last."""
        import torch
        import torch.distributed as dist

        device = torch.device(self.device) if self.cuda else None
        self.stage_module.eval()
        try:
            with torch.no_grad(), autocast:
                if self.first:
                    out = self.stage_module(*(inputs[name] for name in self.plan.input_names))
                else:
                    received: list[Any] = [None]
                    dist.recv_object_list(received, src=self.index - 1, device=device)
                    out = self.stage_module(*(t.to(self.device) for t in received[0]))
                if not self.last:
                    dist.send_object_list([tuple(t.cpu() for t in out)], dst=self.index + 1, device=device)
            logits = [out.detach().float().cpu() if self.last else None]
            dist.broadcast_object_list(logits, src=self.stages - 1, device=device)
            return logits[0]
        finally:
            self.stage_module.train()

    def full_state_dict(self, module: Any) -> Optional[dict[str, Any]]:
        """Every stage's parameters under the whole model's names, gathered on rank 0."""
        import torch.distributed as dist

        mine = {name: p.detach().cpu() for p in self.stage_module.parameters() for name in self.fqns[id(p)]}
        gathered: Optional[list[Any]] = [None] * self.stages if self.plan.world.is_main else None
        dist.gather_object(mine, gathered, dst=0)
        if gathered is None:
            return None
        return {name: tensor for part in gathered for name, tensor in part.items()}


def dist_world() -> Any:
    """The default process group (the pipeline's stages are the whole world)."""
    import torch.distributed as dist

    return dist.group.WORLD
