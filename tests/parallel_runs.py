"""Multi-process training runs for the parallel-strategy tests, without torchrun.

``run_world`` spawns ``world`` gloo processes (``torch.multiprocessing``), each setting
torchrun's environment variables and training the same model through the pytorch
backend's real training session with a strategy; rank 0 sends back the losses (the mean
over replicas, as records hold them) and the whole trained weights
(``full_state_dict``). ``run_single`` trains the same model on the same global batches
in this process: the reference every strategy must match.

Models: ``bert`` (harness's BERT classifier from a config), ``llama`` (a transformers
``LlamaForCausalLM`` from a ``LlamaConfig``: GQA, RoPE, SwiGLU, the causal-LM loss, behind
the harness's logits wrapper) and ``llama-tied`` (the bare ``LlamaForCausalLM`` with tied
input/output embeddings, as decoders are loaded), all with dropout off so that every
strategy computes the same mathematics.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

import numpy as np

STEPS = 4
GLOBAL_BATCH = 8
SEQ = 16


def causal_lm(config: Any) -> Any:
    """A transformers ``LlamaForCausalLM`` (or another causal LM config) behind the
    harness's wrapper shape: ``forward(input_ids, attention_mask) -> logits``, the
    transformers model as ``.model``."""
    import torch
    import transformers

    inner = transformers.AutoModelForCausalLM.from_config(config)

    class CausalLogits(torch.nn.Module):
        input_names = ("input_ids", "attention_mask")

        def __init__(self) -> None:
            super().__init__()
            self.model = inner

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    return CausalLogits()


def build(kind: str) -> Any:
    """The model (a module taking ``input_ids``/``attention_mask``, returning logits)."""
    import torch
    import transformers

    torch.manual_seed(0)
    if kind == "bert":
        from harness.models import ModelOptions, load_model

        config = dict(
            vocab_size=512,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
        return load_model(ModelOptions(name="bert_test", config=config)).module
    config = transformers.LlamaConfig(
        vocab_size=512,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=kind == "llama-tied",
    )
    if kind == "llama-tied":  # as the decoder family loads it: the bare causal LM, embeddings tied
        return transformers.LlamaForCausalLM(config)
    return causal_lm(config)


def causal_lm_loss(logits: Any, inputs: dict[str, Any]) -> Any:
    """Next-token cross-entropy; reads only ``labels`` (= the input ids), as pipeline stages allow."""
    import torch.nn.functional as F

    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), inputs["labels"][:, 1:].reshape(-1))


def batches(kind: str) -> list[dict[str, np.ndarray]]:
    """``STEPS`` fixed global batches (padding in the BERT ones)."""
    rng = np.random.default_rng(1)
    out = []
    for _ in range(STEPS):
        ids = rng.integers(5, 512, size=(GLOBAL_BATCH, SEQ)).astype(np.int64)
        mask = np.ones_like(ids)
        if kind == "bert":
            mask[::2, 12:] = 0
            labels = rng.integers(0, 2, size=GLOBAL_BATCH).astype(np.int64)
        else:
            labels = ids.copy()
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def options(strategy: str, world: int, precision: str = "fp32", checkpointing: bool = False) -> Any:
    from harness.training.options import DistributedOptions, TrainingOptions

    name, _, schedule = strategy.partition("-")  # "pp-gpipe": pp on the GPipe schedule
    dist = DistributedOptions(nproc_per_node=world, strategy=name if world > 1 else "ddp", microbatches=4, pipeline_schedule=schedule or "1f1b")
    replicas = dist.data_parallel_size if world > 1 else 1
    return TrainingOptions(
        batch_size=GLOBAL_BATCH // replicas,
        lr=1e-3,
        precision=precision,
        grad_clip=1.0,
        schedule="constant",
        warmup_steps=0,
        warmup_ratio=0.0,
        max_steps=STEPS,
        activation_checkpointing=checkpointing,
        distributed=dist,
    )


def train(kind: str, opts: Any, world: Any) -> dict[str, Any]:
    """Train ``kind`` for ``STEPS`` on this rank's slices; losses, whole weights, memory."""
    from harness.backends.pytorch import PyTorchBackend, PyTorchOptions
    from harness.training.plan import TrainingPlan

    module = build(kind)
    plan = TrainingPlan.from_options(opts, ("input_ids", "attention_mask"), STEPS, world, loss=None if kind == "bert" else causal_lm_loss)
    session = PyTorchBackend(PyTorchOptions()).prepare_training(module, plan)
    losses = []
    for batch in batches(kind):
        lo = world.dp_rank * opts.batch_size
        part = {k: v[lo : lo + opts.batch_size] for k, v in batch.items()}
        losses.append(session.train_step(session.load(part)))
    losses = session.global_losses(losses)
    logits = session.predict(session.load({k: v[:3] for k, v in batches(kind)[0].items() if k != "labels"}))
    state = session.full_state_dict()
    if state is None:
        state = {k: v.detach().cpu().clone() for k, v in session.module.state_dict().items()}
    memory = session.memory()
    metrics = session.parallel_metrics()
    session.close()
    return {"losses": losses, "state": state, "memory": memory, "metrics": metrics, "logits": logits}


def _worker(rank: int, world: int, port: int, kind: str, strategy: str, extra: dict[str, Any], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
    import torch

    from harness.training.plan import World

    torch.set_num_threads(1)
    opts = options(strategy, world, **extra)
    result = train(kind, opts, World.of(world, rank, rank, opts.distributed))
    if rank == 0:  # a file, not a queue: a large result would block rank 0 until the parent reads
        torch.save(result, out)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # as harness.training.ddp_worker: no teardown of the retired process group


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_world(kind: str, strategy: str, world: int = 2, **extra: Any) -> dict[str, Any]:
    """Rank 0's result of a ``world``-process run of ``strategy``."""
    import tempfile

    import torch
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.pt")
        mp.start_processes(_worker, args=(world, free_port(), kind, strategy, extra, out), nprocs=world, start_method="spawn")
        return torch.load(out, weights_only=False)


def run_single(kind: str, **extra: Any) -> dict[str, Any]:
    """The 1-process reference on the same global batches."""
    from harness.training.plan import World

    return train(kind, options("ddp", 1, **extra), World())
