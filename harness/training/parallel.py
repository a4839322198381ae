"""Training strategies beyond one replica per process, with PyTorch's own APIs.

``scenario.distributed.strategy`` picks one :class:`Strategy`; the pytorch backend's
training session asks it to spread the module over the processes before the optimizer
is built (FSDP and TP replace parameters with ``DTensor`` shards), to run a micro-batch's
forward and backward, to clip, to predict and to bring the weights back whole:

- ``ddp``: :class:`torch.nn.parallel.DistributedDataParallel`, a replica per process.
- ``fsdp``: FSDP2 ``fully_shard`` on every block and then the root; parameters,
  gradients and optimizer state live as 1/N shards; mixed precision through
  ``MixedPrecisionPolicy`` (parameters all-gathered in bf16/fp16, gradients reduced in fp32).
- ``tp``: ``parallelize_module`` with ``ColwiseParallel``/``RowwiseParallel`` on each
  block's attention and MLP (plan from :mod:`harness.training.architectures`).
- ``fsdp+tp``: a 2-D ``[dp, tp]`` device mesh: TP inside each replica, FSDP across them.
- ``pp``: :mod:`harness.training.pipeline` (``torch.distributed.pipelining``).

Activation checkpointing (``torch.utils.checkpoint``, non-reentrant) is applied per block,
before sharding, as torchtitan does. torch is imported inside functions.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Iterable, Optional

from harness.errors import Unsupported
from harness.training.plan import TrainingPlan

#: Dtypes of the mixed-precision names (FSDP's policy and autocast).
LOW_PRECISION = {"bf16": "bfloat16", "fp16": "float16"}


def join_process_group(plan: TrainingPlan, cuda: bool) -> bool:
    """Join torchrun's process group (gloo on the CPU, nccl on CUDA); True when this call created it."""
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    try:
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    except ValueError as exc:  # torch names the missing env variable
        raise Unsupported(f"world size {plan.world.size} needs torchrun's environment: {exc}", "launch through scenario.distributed.nproc_per_node") from None
    return True


def local(tensor: Any) -> Any:
    """This rank's part of ``tensor``: a DTensor's local shard, else the tensor itself."""
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def checkpoint_blocks(blocks: Iterable[Any]) -> None:
    """Recompute each block's activations in backward instead of keeping them.

    The block's ``forward`` is replaced in place by a non-reentrant
    ``torch.utils.checkpoint`` call of the original, so parameter names (and saved
    checkpoints) do not change, and FSDP's hooks stay outside the recomputed region.
    """
    from torch.utils.checkpoint import checkpoint

    for block in blocks:
        block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
        block.harness_checkpointed = True  # the activation meter counts what the checkpoint keeps


def clip_grad_norm(parameters: Iterable[Any], max_norm: float, group: Any = None, exclude_from_norm: Optional[set[int]] = None) -> float:
    """Clip the global L2 norm of the gradients to ``max_norm``; return that norm.

    Works on any mix of plain and ``DTensor`` gradients (TP leaves embeddings and norms
    plain; FSDP+TP puts blocks and the rest on different meshes), where
    ``torch.nn.utils.clip_grad_norm_`` cannot stack their norms: each group of DTensor
    gradients on one mesh and placement is reduced to a full norm with ``full_tensor``.
    ``group`` (pipeline stages) adds the squared norms of the other ranks' disjoint
    parameters; ``exclude_from_norm`` (parameter ids) are scaled but counted by another
    rank (a tied weight held by two stages). Gradients are scaled on their local shards,
    which is exact for every placement (scaling is linear).
    """
    import torch
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    parameters = [p for p in parameters if p.grad is not None]
    grads = [p.grad for p in parameters]
    skip = exclude_from_norm or set()
    groups: dict[Any, list[Any]] = {}
    for grad in (p.grad for p in parameters if id(p) not in skip):
        key = (grad.device_mesh, grad.placements) if isinstance(grad, DTensor) else None
        groups.setdefault(key, []).append(grad)
    squares = []
    for key, members in groups.items():
        norm = torch.nn.utils.get_total_norm(members)
        squares.append((norm.full_tensor() if isinstance(norm, DTensor) else norm).float() ** 2)
    total_sq = torch.stack(squares).sum() if squares else torch.zeros((), device=grads[0].device if grads else "cpu")
    if group is not None:
        dist.all_reduce(total_sq, group=group)
    total = total_sq.sqrt()
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for grad in grads:
        shard = local(grad)
        shard.mul_(coef.to(shard.dtype))
    return float(total)


class Strategy:
    """ddp (and one process): a full replica per process, ``DistributedDataParallel`` when
    the world is larger than 1. Subclasses change what they must."""

    name = "ddp"
    #: Evaluation needs every rank (the model is spread over them); ddp evaluates on rank 0 alone.
    collective_eval = False

    def __init__(self, plan: TrainingPlan, device: str) -> None:
        self.plan = plan
        self.device = device
        self.cuda = device.startswith("cuda")
        self.owns_group = False
        self.mesh: Any = None

    @property
    def distributed(self) -> bool:
        return self.plan.world.size > 1

    # --- set-up -------------------------------------------------------------------
    def setup(self, module: Any) -> tuple[Any, Any]:
        """Spread ``module`` (already on the device) over the processes; return
        ``(module whose parameters the optimizer updates, model that steps call)``."""
        if self.plan.parallel.activation_checkpointing:
            from harness.training.architectures import find_blocks

            checkpoint_blocks(find_blocks(module)[1])
        if not self.distributed:
            return module, module
        import torch
        from torch.nn.parallel import DistributedDataParallel

        self.owns_group = join_process_group(self.plan, self.cuda)
        ids = [torch.device(self.device).index] if self.cuda else None
        return module, DistributedDataParallel(module, device_ids=ids)

    def autocast_dtype(self) -> Optional[str]:
        """The dtype forward passes autocast to (None: fp32, or mixed precision done otherwise)."""
        return LOW_PRECISION.get(self.plan.precision)

    def describe_precision(self) -> str:
        """How mixed precision is realised, for the record."""
        dtype = self.autocast_dtype()
        return f"torch.autocast({dtype})" if dtype else "fp32"

    # --- steps --------------------------------------------------------------------
    def gradient_sync(self, model: Any, enabled: bool) -> Any:
        """A context in which backward does (not) reduce gradients across replicas."""
        no_sync = getattr(model, "no_sync", None)
        return contextlib.nullcontext() if enabled or no_sync is None else no_sync()

    def clip(self, module: Any, max_norm: float) -> None:
        import torch

        torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm)

    def global_mean(self, values: list[float]) -> list[float]:
        """Each value averaged over all ranks (one collective); the values themselves in one process."""
        if not self.distributed or not values:
            return list(values)
        import torch
        import torch.distributed as dist

        tensor = torch.tensor(values, dtype=torch.float64, device=self.device if self.cuda else "cpu")
        dist.all_reduce(tensor)
        return (tensor / self.plan.world.size).tolist()

    def gather(self, value: Any) -> list[Any]:
        """``value`` from every rank, in rank order (a collective when distributed)."""
        if not self.distributed:
            return [value]
        import torch.distributed as dist

        out: list[Any] = [None] * self.plan.world.size
        dist.all_gather_object(out, value)
        return out

    def full_state_dict(self, module: Any) -> Optional[dict[str, Any]]:
        """The whole model's weights on rank 0 (a collective); None when ``module`` already
        holds them whole (ddp, one process)."""
        return None

    def close(self) -> None:
        """Leave the process group this strategy joined, after every rank got here."""
        if self.owns_group:
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()
            self.owns_group = False


#: Sessions of this process that left their process group, kept alive until it ends.
_RETIRED: list[Any] = []


def keep_until_exit(session: Any) -> None:
    """Keep ``session`` (its DDP reducer, DTensors, device mesh) alive until the process ends.

    Freeing a process group from Python runs gloo's ``ProcessGroupGloo`` destructor with
    the GIL held; it joins the group's worker thread, which may still be releasing a
    finished collective's tensors and needs the GIL for that: a deadlock, seen as a rank
    that hangs after training. So nothing frees them: a worker process ends with
    ``os._exit`` once its result is written (:mod:`harness.training.ddp_worker`).
    """
    _RETIRED.append(session)


class ShardedStrategy(Strategy):
    """Common to fsdp, tp and fsdp+tp: a device mesh, DTensor parameters, whole-model
    evaluation on every rank, and weights gathered back with ``get_model_state_dict``."""

    collective_eval = True

    def build_mesh(self) -> Any:
        from torch.distributed.device_mesh import init_device_mesh

        names, sizes = zip(*self.plan.parallel.mesh)
        return init_device_mesh("cuda" if self.cuda else "cpu", tuple(sizes), mesh_dim_names=tuple(names))

    def setup(self, module: Any) -> tuple[Any, Any]:
        from harness.training.architectures import find_blocks

        self.owns_group = join_process_group(self.plan, self.cuda)
        self.mesh = self.build_mesh()
        blocks = find_blocks(module)[1]
        self.shard(module, blocks)
        return module, module

    def shard(self, module: Any, blocks: Any) -> None:
        raise NotImplementedError

    def clip(self, module: Any, max_norm: float) -> None:
        clip_grad_norm(module.parameters(), max_norm)

    def full_state_dict(self, module: Any) -> Optional[dict[str, Any]]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return state if self.plan.world.is_main else None


def apply_tensor_parallel(module: Any, mesh: Any) -> None:
    """Split each block's attention and MLP matrices over ``mesh`` (1-D, the tp ranks)."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    from harness.training.architectures import check_tensor_parallel, tp_plan

    check_tensor_parallel(module, mesh.size())
    styles = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel}
    parallelize_module(module, mesh, {key: styles[style]() for key, style in tp_plan(module).items()})


def apply_activation_checkpointing_then_fsdp(strategy: Strategy, module: Any, blocks: Any, mesh: Any) -> None:
    """FSDP2 ``fully_shard`` per block, then the root (embeddings, head, what is left)."""
    from torch.distributed.fsdp import fully_shard

    if strategy.plan.parallel.activation_checkpointing:
        checkpoint_blocks(blocks)
    policy = fsdp_mixed_precision(strategy.plan.precision)
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(module, mesh=mesh, mp_policy=policy)


def fsdp_mixed_precision(precision: str) -> Any:
    """FSDP2's policy for ``precision``: compute (and all-gather) in bf16/fp16, reduce
    gradients in fp32; the sharded fp32 parameters are what the optimizer updates."""
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if precision not in LOW_PRECISION:
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(param_dtype=getattr(torch, LOW_PRECISION[precision]), reduce_dtype=torch.float32)


class FSDP(ShardedStrategy):
    name = "fsdp"

    def shard(self, module: Any, blocks: Any) -> None:
        apply_activation_checkpointing_then_fsdp(self, module, blocks, self.mesh)

    def autocast_dtype(self) -> Optional[str]:
        return None  # FSDP's MixedPrecisionPolicy casts instead

    def describe_precision(self) -> str:
        if self.plan.precision not in LOW_PRECISION:
            return "fp32"
        return f"fsdp MixedPrecisionPolicy(param {LOW_PRECISION[self.plan.precision]}, reduce float32)"

    def gradient_sync(self, model: Any, enabled: bool) -> Any:
        model.set_requires_gradient_sync(enabled)
        return contextlib.nullcontext()


class TensorParallel(ShardedStrategy):
    name = "tp"

    def shard(self, module: Any, blocks: Any) -> None:
        apply_tensor_parallel(module, self.mesh)
        if self.plan.parallel.activation_checkpointing:
            checkpoint_blocks(blocks)


class FSDPTensorParallel(FSDP):
    """2-D: tensor parallel inside each ``tp`` group, FSDP across the ``dp`` groups."""

    name = "fsdp+tp"

    def shard(self, module: Any, blocks: Any) -> None:
        apply_tensor_parallel(module, self.mesh["tp"])
        apply_activation_checkpointing_then_fsdp(self, module, blocks, self.mesh["dp"])
