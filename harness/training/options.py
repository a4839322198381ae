"""Typed options of the ``training`` scenario kind (and the base of ``distillation``'s).

These dataclasses are the single schema for a training recipe: the scenario validates
``scenario.*`` against them, the DDP worker rebuilds them from JSON, and
``model.checkpoint=auto`` reads the ``bert_train`` / ``resnet_train`` YAML through them,
so a recipe's defaults live in its YAML file and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from harness.validation import choice, require

OPTIMIZERS = ("adamw", "adam", "sgd", "adagrad", "adadelta")
SCHEDULES = ("constant", "linear", "cosine")
PRECISIONS = ("fp32", "bf16", "fp16")
#: How the model is spread over the processes (``scenario.distributed.strategy``).
STRATEGIES = ("ddp", "fsdp", "tp", "pp", "fsdp+tp")
PIPELINE_SCHEDULES = ("1f1b", "gpipe")


@dataclass
class DistributedOptions:
    """``scenario.distributed.*``: data parallelism through ``torchrun``.

    ``batch_size`` stays per process, so the global batch is ``batch_size x
    grad_accum_steps x nproc_per_node x nnodes``. Across nodes, one ``harness`` runs on
    each node with its ``node_rank``; the rendezvous is static (node 0 at
    ``rdzv_endpoint`` hosts it), so global rank 0 is always on node 0, and node 0 alone
    writes the run's record. ``+distributed=slurm`` fills these fields from a Slurm job.

    ``strategy`` says how the model is spread over the processes: ``ddp`` (a replica per
    process), ``fsdp`` (parameters, gradients and optimizer state sharded), ``tp`` (each
    block's attention and MLP matrices split), ``pp`` (the blocks split into consecutive
    stages, ``microbatches`` per step on a ``pipeline_schedule``), ``fsdp+tp`` (a 2-D
    ``mesh`` ``[dp, tp]``). ``batch_size`` is per data-parallel replica: a tensor-parallel
    group or a pipeline is one replica, so tp and pp runs take the 1-process run's steps.
    """

    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: Optional[str] = None  # host:port of the rendezvous; None = this machine
    timeout_s: float = 1800.0  # whole torchrun launch, start-up included
    strategy: str = "ddp"
    mesh: Optional[list[int]] = None  # fsdp+tp only: [dp, tp]; None = derived (mesh_shape)
    microbatches: int = 4  # pp only: micro-batches per step through the stages
    pipeline_schedule: str = "1f1b"  # pp only: 1f1b | gpipe

    def __post_init__(self) -> None:
        require(self.nproc_per_node >= 1, "distributed.nproc_per_node", f"must be >= 1, got {self.nproc_per_node}")
        require(self.nnodes >= 1, "distributed.nnodes", f"must be >= 1, got {self.nnodes}")
        require(0 <= self.node_rank < self.nnodes, "distributed.node_rank", f"must be in 0..nnodes-1 ({self.nnodes - 1}), got {self.node_rank}")
        require(self.nnodes == 1 or bool(self.rdzv_endpoint), "distributed.rdzv_endpoint", "nnodes > 1 needs node 0's host:port, the same on every node")
        if self.rdzv_endpoint:
            host, _, port = self.rdzv_endpoint.rpartition(":")
            require(
                bool(host) and port.isdigit() and 0 < int(port) < 65536,
                "distributed.rdzv_endpoint",
                f"must be host:port (node 0's address and a free port), got {self.rdzv_endpoint!r}",
            )
        require(self.timeout_s > 0, "distributed.timeout_s", f"must be > 0, got {self.timeout_s}")
        choice(self.strategy, STRATEGIES, "distributed.strategy")
        choice(self.pipeline_schedule, PIPELINE_SCHEDULES, "distributed.pipeline_schedule")
        require(self.microbatches >= 1, "distributed.microbatches", f"must be >= 1, got {self.microbatches}")
        require(
            self.strategy == "ddp" or self.world_size > 1,
            "distributed.strategy",
            f"{self.strategy} splits the model over processes but nproc_per_node x nnodes is 1: "
            "set scenario.distributed.nproc_per_node=2 or more, or strategy=ddp",
        )
        if self.mesh is not None:
            self.mesh = [int(size) for size in self.mesh]
            require(
                self.strategy == "fsdp+tp",
                "distributed.mesh",
                f"only strategy fsdp+tp takes a [dp, tp] mesh; {self.strategy} uses all {self.world_size} "
                "processes on one dimension: drop scenario.distributed.mesh",
            )
            require(len(self.mesh) == 2 and all(size >= 1 for size in self.mesh), "distributed.mesh", f"must be [dp, tp] with sizes >= 1, got {self.mesh}")
        if self.strategy == "fsdp+tp":
            dp, tp = self.mesh_shape.values()
            require(
                dp * tp == self.world_size,
                "distributed.mesh",
                f"[{dp}, {tp}] holds {dp * tp} processes but the world has {self.world_size} (nproc_per_node x nnodes); make dp x tp equal it",
            )
            require(
                dp >= 2 and tp >= 2,
                "distributed.mesh",
                f"fsdp+tp needs dp >= 2 and tp >= 2, got [{dp}, {tp}]: use 4 or more processes, or strategy=fsdp / strategy=tp",
            )
        if self.strategy == "pp" and self.pipeline_schedule == "1f1b":
            require(
                self.microbatches >= self.world_size,
                "distributed.microbatches",
                f"1f1b needs at least one micro-batch per stage ({self.world_size}), got {self.microbatches}: raise it or use pipeline_schedule=gpipe",
            )

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    @property
    def mesh_shape(self) -> dict[str, int]:
        """The device mesh, dimension name -> size, outermost first.

        ``fsdp+tp`` without a ``mesh`` keeps tensor parallelism inside a node (its
        collectives are on the critical path of every layer) and shards across nodes:
        ``[nnodes, nproc_per_node]``; on one node ``[world / 2, 2]``.
        """
        world = self.world_size
        if self.strategy == "fsdp+tp":
            if self.mesh is not None:
                return {"dp": self.mesh[0], "tp": self.mesh[1]}
            if self.nnodes > 1:
                return {"dp": self.nnodes, "tp": self.nproc_per_node}
            return {"dp": max(1, world // 2), "tp": 2}
        return {{"tp": "tp", "pp": "pp"}.get(self.strategy, "dp"): world}

    @property
    def data_parallel_size(self) -> int:
        """Replicas that read different data: the mesh's ``dp`` dimension (1 for tp and pp)."""
        return self.mesh_shape.get("dp", 1)

    def weights_identity(self) -> dict[str, object]:
        """What of the world changes the trained weights (for checkpoint keys): the
        replica count sets the global batch; a strategy other than ddp is recorded too
        (same mathematics, other reduction order). ddp keeps its former key."""
        if self.strategy == "ddp":
            return {"world_size": self.world_size}
        return {"world_size": self.world_size, "strategy": self.strategy, "mesh": self.mesh_shape}


@dataclass
class InferenceTiming:
    """Inference-timing keys: distillation times the student and the teacher with them
    (the training kind does not time inference and has none of them)."""

    warmup_iters: int = 5
    min_iters: int = 20
    min_duration_s: float = 2.0
    max_duration_s: float = 60.0

    def __post_init__(self) -> None:
        require(self.warmup_iters >= 0, "warmup_iters", f"must be >= 0, got {self.warmup_iters}")
        require(self.min_iters >= 1, "min_iters", f"must be >= 1, got {self.min_iters}")
        require(self.min_duration_s >= 0, "min_duration_s", f"must be >= 0, got {self.min_duration_s}")
        require(self.max_duration_s >= self.min_duration_s, "max_duration_s", f"must be >= min_duration_s ({self.min_duration_s}), got {self.max_duration_s}")


@dataclass
class TrainingOptions:
    """``scenario.*`` keys of ``kind: training``.

    Steps are optimizer updates: one step consumes ``grad_accum_steps`` micro-batches of
    ``batch_size`` on every process. ``max_steps > 0`` overrides ``epochs``.
    ``warmup_steps > 0`` overrides ``warmup_ratio`` (the share of all steps the LR ramps
    up over). ``dropout`` (None = the model config's own) sets every dropout layer,
    through the transformers config fields where the model has them.
    """

    precision: str = "fp32"
    batch_size: int = 32
    seq_len: int = 32
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    dropout: Optional[float] = None
    grad_clip: float = 1.0  # max global grad norm; 0 = no clipping
    grad_accum_steps: int = 1
    schedule: str = "linear"
    warmup_steps: int = 0
    warmup_ratio: float = 0.1
    epochs: int = 2
    max_steps: int = 0
    eval_interval: int = 50  # steps between evaluations; 0 = only after the last step
    eval_batch_size: int = 256
    log_interval: int = 10  # steps averaged into one loss-curve point
    target_accuracy: Optional[float] = None
    target_perplexity: Optional[float] = None  # causal LMs: eval perplexity to reach (lower is better)
    seed: int = 0
    warmup_steps_excluded: int = 5  # first steps left out of throughput and latency
    activation_checkpointing: bool = False  # recompute each block's activations in backward
    profile_steps: int = 2  # multi-process: warm-up steps profiled for the compute/communication split
    distributed: DistributedOptions = field(default_factory=DistributedOptions)

    def __post_init__(self) -> None:
        choice(self.precision, PRECISIONS, "precision")
        choice(self.optimizer, OPTIMIZERS, "optimizer")
        choice(self.schedule, SCHEDULES, "schedule")
        for key in ("batch_size", "grad_accum_steps", "eval_batch_size", "log_interval"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        require(self.seq_len >= 2, "seq_len", f"must be >= 2, got {self.seq_len}")
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(0 <= self.momentum < 1, "momentum", f"must be in [0, 1), got {self.momentum}")
        require(not self.nesterov or (self.optimizer == "sgd" and self.momentum > 0), "nesterov", "needs optimizer=sgd with momentum > 0")
        require(self.dropout is None or 0 <= self.dropout < 1, "dropout", f"must be in [0, 1) or null, got {self.dropout}")
        require(self.grad_clip >= 0, "grad_clip", f"must be >= 0 (0 = off), got {self.grad_clip}")
        require(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        require(0 <= self.warmup_ratio < 1, "warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        require(self.epochs >= 1 or self.max_steps >= 1, "epochs", "set epochs >= 1 or max_steps >= 1")
        require(self.max_steps >= 0, "max_steps", f"must be >= 0 (0 = use epochs), got {self.max_steps}")
        require(self.eval_interval >= 0, "eval_interval", f"must be >= 0, got {self.eval_interval}")
        require(self.target_accuracy is None or 0 < self.target_accuracy <= 1, "target_accuracy", f"must be in (0, 1] or null, got {self.target_accuracy}")
        require(
            self.target_perplexity is None or self.target_perplexity >= 1,
            "target_perplexity",
            f"must be >= 1 (perplexity's floor) or null, got {self.target_perplexity}",
        )
        require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        require(self.warmup_steps_excluded >= 0, "warmup_steps_excluded", f"must be >= 0, got {self.warmup_steps_excluded}")
        require(self.profile_steps >= 0, "profile_steps", f"must be >= 0 (0 = off), got {self.profile_steps}")
        dist = self.distributed
        if dist.strategy == "pp":
            require(
                self.batch_size % dist.microbatches == 0,
                "distributed.microbatches",
                f"batch_size {self.batch_size} does not split into {dist.microbatches} equal micro-batches: make scenario.batch_size a multiple of it",
            )

    def profiled_steps(self) -> list[int]:
        """The steps profiled for the compute/communication split: the last ``profile_steps``
        warm-up steps before measurement (never step 1, which pays for lazy set-up), so
        the profiler's overhead never reaches the measured steps. Empty for one process:
        there is no communication to separate."""
        if self.distributed.world_size == 1:
            return []
        first = max(2, self.warmup_steps_excluded - self.profile_steps + 1)
        return list(range(first, self.warmup_steps_excluded + 1))

    def total_steps(self, steps_per_epoch: int) -> int:
        """Optimizer steps the run makes: ``max_steps`` when set, else whole epochs."""
        return self.max_steps if self.max_steps > 0 else self.epochs * steps_per_epoch

    def resolved_warmup(self, total_steps: int) -> int:
        """LR warm-up steps: ``warmup_steps`` when set, else ``int(warmup_ratio x total_steps)`` (rounded down)."""
        return self.warmup_steps if self.warmup_steps > 0 else int(self.warmup_ratio * total_steps)


#: ``scenario.*`` keys of a multi-node run that are rendezvous bookkeeping (which node this
#: process is, where the nodes meet, how long they wait), never part of the experiment:
#: the training kinds declare them run-local.
RENDEZVOUS_KEYS = ("distributed.node_rank", "distributed.rdzv_endpoint", "distributed.timeout_s")

#: Options that change what is measured or logged but never the trained weights;
#: the checkpoint key leaves them out so a re-run with another eval cadence reuses it.
MEASUREMENT_ONLY = (
    "warmup_iters",
    "min_iters",
    "min_duration_s",
    "max_duration_s",
    "eval_interval",
    "eval_batch_size",
    "log_interval",
    "target_accuracy",
    "target_perplexity",
    "warmup_steps_excluded",
    "activation_checkpointing",
    "profile_steps",
)
