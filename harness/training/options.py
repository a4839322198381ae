"""Typed options of the ``training`` scenario kind (and the base of ``distillation``'s).

These dataclasses are the single schema for a training recipe: the scenario validates
``scenario.*`` against them, the DDP worker rebuilds them from JSON, and
``model.checkpoint=auto`` reads the ``bert_train`` / ``resnet_train`` YAML through them,
so a recipe's defaults live in its YAML file and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from harness.config import choice, require

OPTIMIZERS = ("adamw", "adam", "sgd", "adagrad", "adadelta")
SCHEDULES = ("constant", "linear", "cosine")
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class DistributedOptions:
    """``scenario.distributed.*``: data parallelism through ``torchrun``.

    ``batch_size`` stays per process, so the global batch is ``batch_size x
    grad_accum_steps x nproc_per_node x nnodes``. Across nodes, one ``harness`` runs on
    each node with its ``node_rank``; the rendezvous is static (node 0 at
    ``rdzv_endpoint`` hosts it), so global rank 0 is always on node 0, and node 0 alone
    writes the run's record. ``+distributed=slurm`` fills these fields from a Slurm job.
    """

    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: Optional[str] = None  # host:port of the rendezvous; None = this machine
    timeout_s: float = 1800.0            # whole torchrun launch, start-up included

    def __post_init__(self) -> None:
        require(self.nproc_per_node >= 1, "distributed.nproc_per_node", f"must be >= 1, got {self.nproc_per_node}")
        require(self.nnodes >= 1, "distributed.nnodes", f"must be >= 1, got {self.nnodes}")
        require(0 <= self.node_rank < self.nnodes, "distributed.node_rank",
                f"must be in 0..nnodes-1 ({self.nnodes - 1}), got {self.node_rank}")
        require(self.nnodes == 1 or bool(self.rdzv_endpoint), "distributed.rdzv_endpoint",
                "nnodes > 1 needs node 0's host:port, the same on every node")
        if self.rdzv_endpoint:
            host, _, port = self.rdzv_endpoint.rpartition(":")
            require(bool(host) and port.isdigit() and 0 < int(port) < 65536, "distributed.rdzv_endpoint",
                    f"must be host:port (node 0's address and a free port), got {self.rdzv_endpoint!r}")
        require(self.timeout_s > 0, "distributed.timeout_s", f"must be > 0, got {self.timeout_s}")

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes


@dataclass
class InferenceTiming:
    """Inference-timing keys: distillation times the student and the teacher with them.

    ``conf/config.yaml``'s inline default scenario merges these keys into every
    ``+scenario=...``, so the training kind accepts them too; it does not time inference.
    """

    warmup_iters: int = 5
    min_iters: int = 20
    min_duration_s: float = 2.0
    max_duration_s: float = 60.0

    def __post_init__(self) -> None:
        require(self.warmup_iters >= 0, "warmup_iters", f"must be >= 0, got {self.warmup_iters}")
        require(self.min_iters >= 1, "min_iters", f"must be >= 1, got {self.min_iters}")
        require(self.min_duration_s >= 0, "min_duration_s", f"must be >= 0, got {self.min_duration_s}")
        require(self.max_duration_s >= self.min_duration_s, "max_duration_s",
                f"must be >= min_duration_s ({self.min_duration_s}), got {self.max_duration_s}")


@dataclass
class TrainingOptions(InferenceTiming):
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
    momentum: float = 0.9       # sgd only
    nesterov: bool = False      # sgd only
    dropout: Optional[float] = None
    grad_clip: float = 1.0      # max global grad norm; 0 = no clipping
    grad_accum_steps: int = 1
    schedule: str = "linear"
    warmup_steps: int = 0
    warmup_ratio: float = 0.1
    epochs: int = 2
    max_steps: int = 0
    eval_interval: int = 50     # steps between evaluations; 0 = only after the last step
    eval_batch_size: int = 256
    log_interval: int = 10      # steps averaged into one loss-curve point
    target_accuracy: Optional[float] = None
    target_perplexity: Optional[float] = None  # causal LMs: eval perplexity to reach (lower is better)
    seed: int = 0
    warmup_steps_excluded: int = 5  # first steps left out of throughput and latency
    distributed: DistributedOptions = field(default_factory=DistributedOptions)

    def __post_init__(self) -> None:
        super().__post_init__()
        choice(self.precision, PRECISIONS, "precision")
        choice(self.optimizer, OPTIMIZERS, "optimizer")
        choice(self.schedule, SCHEDULES, "schedule")
        for key in ("batch_size", "grad_accum_steps", "eval_batch_size", "log_interval"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        require(self.seq_len >= 2, "seq_len", f"must be >= 2, got {self.seq_len}")
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(0 <= self.momentum < 1, "momentum", f"must be in [0, 1), got {self.momentum}")
        require(not self.nesterov or (self.optimizer == "sgd" and self.momentum > 0), "nesterov",
                "needs optimizer=sgd with momentum > 0")
        require(self.dropout is None or 0 <= self.dropout < 1, "dropout", f"must be in [0, 1) or null, got {self.dropout}")
        require(self.grad_clip >= 0, "grad_clip", f"must be >= 0 (0 = off), got {self.grad_clip}")
        require(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        require(0 <= self.warmup_ratio < 1, "warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        require(self.epochs >= 1 or self.max_steps >= 1, "epochs", "set epochs >= 1 or max_steps >= 1")
        require(self.max_steps >= 0, "max_steps", f"must be >= 0 (0 = use epochs), got {self.max_steps}")
        require(self.eval_interval >= 0, "eval_interval", f"must be >= 0, got {self.eval_interval}")
        require(self.target_accuracy is None or 0 < self.target_accuracy <= 1, "target_accuracy",
                f"must be in (0, 1] or null, got {self.target_accuracy}")
        require(self.target_perplexity is None or self.target_perplexity >= 1, "target_perplexity",
                f"must be >= 1 (perplexity's floor) or null, got {self.target_perplexity}")
        require(self.seed >= 0, "seed", f"must be >= 0, got {self.seed}")
        require(self.warmup_steps_excluded >= 0, "warmup_steps_excluded", f"must be >= 0, got {self.warmup_steps_excluded}")

    def total_steps(self, steps_per_epoch: int) -> int:
        """Optimizer steps the run makes: ``max_steps`` when set, else whole epochs."""
        return self.max_steps if self.max_steps > 0 else self.epochs * steps_per_epoch

    def resolved_warmup(self, total_steps: int) -> int:
        """LR warm-up steps: ``warmup_steps`` when set, else ``int(warmup_ratio x total_steps)`` (rounded down)."""
        return self.warmup_steps if self.warmup_steps > 0 else int(self.warmup_ratio * total_steps)


#: Options that change what is measured or logged but never the trained weights;
#: the checkpoint key leaves them out so a re-run with another eval cadence reuses it.
MEASUREMENT_ONLY = ("warmup_iters", "min_iters", "min_duration_s", "max_duration_s", "eval_interval",
                    "eval_batch_size", "log_interval", "target_accuracy", "target_perplexity",
                    "warmup_steps_excluded")
