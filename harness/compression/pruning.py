"""Pruning before export: unstructured magnitude, and structured pruning that shrinks BERT.

- ``magnitude``: global L1 unstructured pruning of every ``nn.Linear`` weight in the
  encoder and classifier (``torch.nn.utils.prune``), made permanent. The weights keep
  their shapes, so the exported ONNX has the same size and dense runtimes run it at the
  same speed; the record says so through ``sparsity`` beside unchanged ``params``.
- ``structured``: removes whole attention heads and FFN neurons from every BERT layer
  (``transformers.pytorch_utils.prune_linear_layer`` on the query/key/value/output
  and intermediate/output projections), so the exported graph has smaller matmuls: fewer
  parameters, a smaller file and less compute. Which heads and neurons go is decided by
  ``criterion``: ``importance`` (Michel et al., 2019: |d loss / d gate| of a gate on each
  head's and neuron's output, summed over real train batches) or ``magnitude`` (norm
  of the weights that feed and read each head/neuron).

Structured pruning costs accuracy; ``finetune_steps`` recovers it by training the
pruned model with the harness's own training loop (:func:`harness.training.job.train_model`)
on the train split. Pruned models are cached (safetensors weights + the kept
indices) under a key of the source weights, the options and the data, so only the
first run pays for importance scoring and fine-tuning.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from harness.identity import package_versions
from harness import cache
from harness.validation import choice, require
from harness.errors import Unsupported

METHODS = ("none", "magnitude", "structured")
CRITERIA = ("importance", "magnitude")
#: Bump when the cached layout or the pruning code changes (older entries are then not reused).
REVISION = 1


@dataclass
class PruningOptions:
    """``scenario.pruning.*``.

    ``sparsity``: fraction of Linear weights zeroed (magnitude). ``heads`` / ``ffn``:
    fraction of attention heads / FFN neurons removed from every layer (structured; at
    least one head is kept). ``importance_samples``: train examples scored for
    ``criterion=importance``. ``finetune_steps`` > 0 fine-tunes after pruning with
    ``finetune_lr`` at ``finetune_seq_len`` tokens (batch ``finetune_batch_size``).
    """

    method: str = "none"
    sparsity: float = 0.5
    heads: float = 0.5
    ffn: float = 0.5
    criterion: str = "importance"
    importance_samples: int = 256
    finetune_steps: int = 0
    finetune_lr: float = 1e-4
    finetune_batch_size: int = 32
    finetune_seq_len: int = 32

    def __post_init__(self) -> None:
        choice(self.method, METHODS, "pruning.method")
        choice(self.criterion, CRITERIA, "pruning.criterion")
        require(0 <= self.sparsity < 1, "pruning.sparsity", f"must be in [0, 1), got {self.sparsity}")
        require(0 <= self.heads < 1, "pruning.heads", f"must be in [0, 1), got {self.heads}")
        require(0 <= self.ffn < 1, "pruning.ffn", f"must be in [0, 1), got {self.ffn}")
        require(self.importance_samples >= 1, "pruning.importance_samples", f"must be >= 1, got {self.importance_samples}")
        require(self.finetune_steps >= 0, "pruning.finetune_steps", f"must be >= 0, got {self.finetune_steps}")
        require(self.finetune_lr > 0, "pruning.finetune_lr", f"must be > 0, got {self.finetune_lr}")
        require(self.finetune_batch_size >= 1, "pruning.finetune_batch_size", f"must be >= 1, got {self.finetune_batch_size}")
        require(self.finetune_seq_len >= 2, "pruning.finetune_seq_len", f"must be >= 2, got {self.finetune_seq_len}")

    @property
    def enabled(self) -> bool:
        return self.method != "none"


# --- measuring ---------------------------------------------------------------------------------


def count_params(module: Any) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def linear_layers(module: Any) -> list[Any]:
    """Every ``nn.Linear`` of the model (encoder projections, pooler, classifier)."""
    import torch

    return [m for m in module.modules() if isinstance(m, torch.nn.Linear)]


def sparsity(module: Any) -> dict[str, float]:
    """Fraction of exactly-zero values in Linear weights and in all parameters."""
    linear = [m.weight.detach() for m in linear_layers(module)]
    zeros = sum(int((w == 0).sum()) for w in linear)
    total = sum(w.numel() for w in linear)
    all_zeros = sum(int((p.detach() == 0).sum()) for p in module.parameters())
    return {"linear": zeros / total if total else 0.0, "all": all_zeros / max(1, count_params(module))}


# --- unstructured ------------------------------------------------------------------------------


def magnitude_prune(module: Any, amount: float) -> None:
    """Zero the ``amount`` smallest-|w| Linear weights model-wide (global L1), permanently."""
    import torch.nn.utils.prune as prune

    targets = [(m, "weight") for m in linear_layers(module)]
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=amount)
    for layer, name in targets:
        prune.remove(layer, name)


# --- structured (BERT) -------------------------------------------------------------------------


def bert_layers(module: Any) -> list[Any]:
    """The encoder layers of a BERT classifier wrapped by :mod:`harness.models`."""
    inner = getattr(module, "model", module)
    bert = getattr(inner, "bert", None)
    if bert is None:
        raise Unsupported(
            "structured pruning removes BERT attention heads and FFN neurons; this model is not a BERT",
            "use scenario.pruning.method=magnitude for other models",
        )
    return list(bert.encoder.layer)


def _gated_losses(module: Any, layers: list[Any], batches: list[dict[str, np.ndarray]]) -> tuple[list[Any], list[Any]]:
    """Accumulated |d loss / d gate| for every head and FFN neuron of every layer."""
    import torch

    head_gates, ffn_gates, hooks = [], [], []
    for layer in layers:
        attention = layer.attention.self
        heads, size = attention.num_attention_heads, attention.attention_head_size
        head_gate = torch.ones(heads, requires_grad=True)
        ffn_gate = torch.ones(layer.intermediate.dense.out_features, requires_grad=True)

        def gate_heads(_m: Any, _inputs: Any, output: Any, gate: Any = head_gate, h: int = heads, d: int = size) -> Any:
            context = output[0]
            shaped = context.view(*context.shape[:-1], h, d) * gate[:, None]
            return (shaped.reshape(context.shape), *output[1:])

        def gate_ffn(_m: Any, _inputs: Any, output: Any, gate: Any = ffn_gate) -> Any:
            return output * gate

        hooks.append(attention.register_forward_hook(gate_heads))
        hooks.append(layer.intermediate.register_forward_hook(gate_ffn))
        head_gates.append(head_gate)
        ffn_gates.append(ffn_gate)

    head_scores = [torch.zeros_like(g) for g in head_gates]
    ffn_scores = [torch.zeros_like(g) for g in ffn_gates]
    names = getattr(module, "input_names", ("input_ids", "attention_mask"))
    module.eval()
    try:
        for batch in batches:
            inputs = {n: torch.from_numpy(np.ascontiguousarray(batch[n])) for n in names}
            loss = torch.nn.functional.cross_entropy(module(**inputs), torch.from_numpy(batch["labels"]))
            grads = torch.autograd.grad(loss, head_gates + ffn_gates)
            for i, g in enumerate(grads[: len(layers)]):
                head_scores[i] += g.abs()
            for i, g in enumerate(grads[len(layers) :]):
                ffn_scores[i] += g.abs()
    finally:
        for hook in hooks:
            hook.remove()
    return head_scores, ffn_scores


def _magnitude_scores(layers: list[Any]) -> tuple[list[Any], list[Any]]:
    """Weight norms feeding and reading each head / neuron (no data needed)."""
    import torch

    heads, ffn = [], []
    for layer in layers:
        sa, out = layer.attention.self, layer.attention.output.dense
        d = sa.attention_head_size
        rows = torch.stack([sa.query.weight, sa.key.weight, sa.value.weight]).detach()  # (3, H*d, hidden)
        per_head = rows.reshape(3, sa.num_attention_heads, d, -1).pow(2).sum(dim=(0, 2, 3))
        per_head += out.weight.detach().reshape(out.weight.shape[0], sa.num_attention_heads, d).pow(2).sum(dim=(0, 2))
        heads.append(per_head.sqrt())
        up, down = layer.intermediate.dense.weight.detach(), layer.output.dense.weight.detach()
        ffn.append(up.norm(dim=1) * down.norm(dim=0))
    return heads, ffn


def _keep(scores: Any, fraction: float, minimum: int = 1) -> list[int]:
    """Indices of the highest-scoring ``1 - fraction`` entries (at least ``minimum``), sorted."""
    total = int(scores.numel())
    kept = max(minimum, total - int(round(fraction * total)))
    order = np.argsort(-scores.detach().numpy(), kind="stable")[:kept]
    return sorted(int(i) for i in order)


def remove_heads(layer: Any, keep: list[int]) -> None:
    """Keep only heads ``keep`` of one BERT layer's self-attention."""
    import torch
    from transformers.pytorch_utils import prune_linear_layer

    sa = layer.attention.self
    d = sa.attention_head_size
    index = torch.cat([torch.arange(h * d, (h + 1) * d) for h in keep]).long()
    sa.query = prune_linear_layer(sa.query, index, dim=0)
    sa.key = prune_linear_layer(sa.key, index, dim=0)
    sa.value = prune_linear_layer(sa.value, index, dim=0)
    layer.attention.output.dense = prune_linear_layer(layer.attention.output.dense, index, dim=1)
    sa.num_attention_heads = len(keep)
    sa.all_head_size = len(keep) * d


def remove_neurons(layer: Any, keep: list[int]) -> None:
    """Keep only FFN neurons ``keep`` of one BERT layer."""
    import torch
    from transformers.pytorch_utils import prune_linear_layer

    index = torch.tensor(keep, dtype=torch.long)
    layer.intermediate.dense = prune_linear_layer(layer.intermediate.dense, index, dim=0)
    layer.output.dense = prune_linear_layer(layer.output.dense, index, dim=1)


def apply_plan(module: Any, plan: dict[str, Any]) -> None:
    """Remove the heads and neurons ``plan`` does not keep (``{"heads": [[...]], "ffn": [[...]]}``)."""
    for layer, heads, neurons in zip(bert_layers(module), plan["heads"], plan["ffn"]):
        remove_heads(layer, heads)
        remove_neurons(layer, neurons)


def structured_plan(module: Any, options: PruningOptions, batches: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Which heads and neurons every layer keeps, by ``options.criterion``."""
    layers = bert_layers(module)
    if options.criterion == "importance":
        head_scores, ffn_scores = _gated_losses(module, layers, batches)
    else:
        head_scores, ffn_scores = _magnitude_scores(layers)
    return {
        "heads": [_keep(s, options.heads) for s in head_scores],
        "ffn": [_keep(s, options.ffn) for s in ffn_scores],
    }


# --- fine-tuning ----------------------------------------------------------------------------


def finetune(model: Any, data: Any, options: PruningOptions, trainer: Any, report: Callable[[str], None]) -> dict[str, Any]:
    """Train the pruned ``model`` in place with the harness training loop; return what it saw."""
    from harness.training.job import train_model
    from harness.training.options import TrainingOptions

    plan = TrainingOptions(
        batch_size=options.finetune_batch_size,
        seq_len=options.finetune_seq_len,
        lr=options.finetune_lr,
        max_steps=options.finetune_steps,
        warmup_ratio=0.1,
        eval_interval=0,
        warmup_steps_excluded=0,
    )
    trained = train_model(trainer, model, data, plan, report=report, label="fine-tuning the pruned model")
    return {
        "steps": options.finetune_steps,
        "lr": options.finetune_lr,
        "batch_size": options.finetune_batch_size,
        "seq_len": options.finetune_seq_len,
        "backend": trainer.name,
        "final_accuracy": trained.loop.final_accuracy,
        "seconds": round(trained.loop.wall_seconds, 2),
    }


# --- the stage -------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    return package_versions(("torch", "transformers"))


def _pruned_model(loaded: Any, module: Any, info: dict[str, Any]) -> Any:
    """A :class:`LoadedModel` for ``module``, with a config that names the pruning."""
    config = {**loaded.config, "pruning": {k: info[k] for k in ("method", "key")}}
    return replace(loaded, module=module, params=count_params(module), config=config, source=f"{loaded.source} pruned:{info['method']}")


def prune(
    loaded: Any,
    data: Any,
    options: PruningOptions,
    *,
    cache_root: Optional[str] = None,
    trainer: Any = None,
    report: Callable[[str], None] = print,
) -> tuple[Any, dict[str, Any]]:
    """Prune (and fine-tune) a copy of ``loaded``; return the new model and ``metrics.pruning``.

    ``data`` gives the train batches for importance scores and fine-tuning (tokenized at
    ``options.finetune_seq_len``); ``trainer`` is a backend that can train (needed only
    when ``finetune_steps > 0``). The source model is left untouched: it stays the fp32
    reference for accuracy.
    """
    from safetensors.torch import load_file, save_file

    settings = asdict(options)
    if options.method == "magnitude":
        for unused in ("heads", "ffn", "criterion", "importance_samples"):
            settings.pop(unused)
    elif options.method == "structured":
        settings.pop("sparsity")
    key = cache.content_key("pruned", REVISION, loaded.weights_digest(), settings, data.fingerprint(), _versions())
    folder = cache.cache_dir(cache_root) / "pruned" / key
    params_before = count_params(loaded.module)
    module = copy.deepcopy(loaded.module).eval()
    started = time.perf_counter()

    info, problem = _cached_info(folder)
    if info is not None:
        if info.get("plan"):
            apply_plan(module, info["plan"])
        module.load_state_dict(load_file(str(folder / "model.safetensors")))
        module.eval()
        info.update(cached=True, seconds=round(time.perf_counter() - started, 3))
        return _pruned_model(loaded, module, info), _for_record(info)
    if folder.exists():
        cache.discard(folder, problem)

    info = {"method": options.method, "key": key, "options": settings, "params_before": params_before}
    plan = None
    if options.method == "magnitude":
        report(f"magnitude pruning {options.sparsity:.0%} of the Linear weights")
        magnitude_prune(module, options.sparsity)
    else:
        batches = list(data.batches("train", 16, shuffle=True, seed=1, limit=options.importance_samples))
        report(
            f"structured pruning: scoring heads and FFN neurons by {options.criterion}"
            + (f" on {options.importance_samples} train samples" if options.criterion == "importance" else "")
        )
        plan = structured_plan(module, options, batches)
        apply_plan(module, plan)
        info["heads_kept"] = [len(h) for h in plan["heads"]]
        info["ffn_kept"] = [len(f) for f in plan["ffn"]]
        info["heads_removed"] = sum(loaded_heads(loaded)) - sum(info["heads_kept"])
        info["ffn_removed"] = sum(loaded_ffn(loaded)) - sum(info["ffn_kept"])
    info["plan"] = plan
    if options.finetune_steps:
        if trainer is None:
            raise Unsupported(
                "pruning.finetune_steps > 0 needs a backend that can train", "install torch (backend=pytorch) or set scenario.pruning.finetune_steps=0"
            )
        pruned = _pruned_model(loaded, module, {"method": options.method, "key": key})
        info["finetune"] = finetune(pruned, data, options, trainer, report)
        module = pruned.module
        if options.method == "magnitude":  # training revives pruned weights: prune again, then report
            magnitude_prune(module, options.sparsity)
    module.eval()
    info.update(params_after=count_params(module), sparsity=sparsity(module))

    with cache.staging("pruned", key, cache_root) as work:
        save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(work / "model.safetensors"))
        (work / "meta.json").write_text(json.dumps(info, indent=2))
        cache.publish(work, folder, required=_FILES)
    info.update(cached=False, seconds=round(time.perf_counter() - started, 3))
    return _pruned_model(loaded, module, info), _for_record(info)


#: Files of a complete pruned-model cache entry.
_FILES = ("model.safetensors", "meta.json")


def _cached_info(folder: Path) -> tuple[Optional[dict[str, Any]], str]:
    """(the meta of a reusable entry, "") or (None, why ``folder`` is not one): complete,
    matching its checksums (:mod:`harness.cache`), with a meta.json that parses."""
    if not (folder / "meta.json").is_file():
        return None, "is incomplete"
    if not cache.folder_verified(folder, _FILES):
        return None, "does not match its checksums (truncated or corrupted)"
    try:
        info = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        info = None
    return (info, "") if isinstance(info, dict) else (None, "has an unreadable meta.json")


def _for_record(info: dict[str, Any]) -> dict[str, Any]:
    """``metrics.pruning``: everything but the kept indices (they stay in the cache's meta.json)."""
    return {k: v for k, v in info.items() if k != "plan"}


def loaded_heads(loaded: Any) -> list[int]:
    """Attention heads per layer of the unpruned model."""
    return [layer.attention.self.num_attention_heads for layer in bert_layers(loaded.module)]


def loaded_ffn(loaded: Any) -> list[int]:
    """FFN neurons per layer of the unpruned model."""
    return [layer.intermediate.dense.out_features for layer in bert_layers(loaded.module)]
