"""What the parallel strategies need to know about a transformers model's structure.

Every strategy but ddp reaches inside the model: fsdp shards it block by block,
activation checkpointing recomputes each block, tp splits the matrices of each block's
attention and MLP, pp cuts the block list into stages. The knowledge is kept here, per
model family, and read from transformers itself where it declares it:

- the blocks are the ``nn.ModuleList`` that holds most of the parameters (BERT's
  ``encoder.layer``, Llama's ``layers``, GPT-2's ``h``), found by inspection;
- the tensor-parallel plan is the config's own ``base_model_tp_plan`` (transformers
  declares it for Llama, Mistral, Qwen ... decoders), or for families that declare none
  (BERT) the plan in :data:`TP_PLANS`;
- a pipeline stage runs the task model's embedding, a slice of blocks and its head;
  :data:`PIPELINE_ADAPTERS` says how, per task-model class (the head differs between
  a sequence classifier and a causal LM).

A model without the needed entry gets a one-line ``Unsupported`` naming what is missing
and which strategies still work, never a silent fallback.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from harness.errors import ConfigError, Unsupported
from harness.models import transformers_model

#: Tensor-parallel plans for families whose transformers config declares none: fqn
#: patterns under the base model -> ``colwise`` (output features split: q/k/v, MLP up)
#: or ``rowwise`` (input features split, partial sums all-reduced: attention out, MLP down).
TP_PLANS: Mapping[str, Mapping[str, str]] = {
    "bert": {
        "encoder.layer.*.attention.self.query": "colwise",
        "encoder.layer.*.attention.self.key": "colwise",
        "encoder.layer.*.attention.self.value": "colwise",
        "encoder.layer.*.attention.output.dense": "rowwise",
        "encoder.layer.*.intermediate.dense": "colwise",
        "encoder.layer.*.output.dense": "rowwise",
    },
}

#: Config fields whose head counts tensor parallelism splits across ranks.
HEAD_FIELDS = ("num_attention_heads", "num_key_value_heads")


#: The transformers model inside a harness module (:func:`harness.models.transformers_model`).
hf_model = transformers_model


def describe(module: Any) -> str:
    """``ClassName (model_type)`` for messages."""
    model = hf_model(module)
    kind = getattr(getattr(model, "config", None), "model_type", None)
    return f"{type(model).__name__}" + (f" ({kind})" if kind else "")


def find_blocks(module: Any) -> tuple[str, Any]:
    """``(dotted path, nn.ModuleList)`` of the repeated blocks: the list holding most parameters."""
    import torch

    best: tuple[int, str, Any] = (0, "", None)
    for name, child in module.named_modules():
        if isinstance(child, torch.nn.ModuleList) and len(child) > 0:
            count = sum(p.numel() for p in child.parameters())
            if count > best[0]:
                best = (count, name, child)
    if best[2] is None:
        raise Unsupported(
            f"model {describe(module)} has no list of repeated blocks to shard, split or checkpoint", "train it with scenario.distributed.strategy=ddp"
        )
    return best[1], best[2]


def tp_plan(module: Any) -> dict[str, str]:
    """``{fqn pattern under module: 'colwise'|'rowwise'}`` for the model's blocks."""
    model = hf_model(module)
    config = getattr(model, "config", None)
    declared = dict(getattr(config, "base_model_tp_plan", None) or {})
    if not declared:
        declared = dict(TP_PLANS.get(getattr(config, "model_type", ""), {}))
    plan = {key: style for key, style in declared.items() if style in ("colwise", "rowwise")}
    if not plan:
        raise Unsupported(
            f"tp: model {describe(module)} has no tensor-parallel plan (transformers declares none and harness.training.architectures.TP_PLANS has none)",
            "use scenario.distributed.strategy=fsdp or ddp for this model",
        )
    prefix = getattr(model, "base_model_prefix", "")
    base = prefix if prefix and hasattr(model, prefix) else ""
    outer = "model." if model is not module else ""
    return {f"{outer}{base + '.' if base else ''}{key}": style for key, style in plan.items()}


def check_tensor_parallel(module: Any, tp: int) -> None:
    """Refuse a tp degree that does not divide the heads (each rank holds whole heads)."""
    config = getattr(hf_model(module), "config", None)
    check_layout(config.to_dict() if config is not None else {}, describe(module), "tp", {"tp": tp})


#: transformers config fields that hold the block count, by naming convention.
LAYER_FIELDS = ("num_hidden_layers", "n_layer", "num_layers")


def check_layout(config: Mapping[str, Any], model: str, strategy: str, mesh: Mapping[str, int]) -> None:
    """Refuse, before any process starts, a layout the model's config cannot take: a
    block count that does not split into the pipeline stages, or heads that the tensor-
    parallel size does not divide. ``config`` is a transformers config as a dict; fields
    it lacks are left to the check inside the workers."""
    if strategy == "pp":
        layers = next((config[f] for f in LAYER_FIELDS if isinstance(config.get(f), int)), None)
        if layers is not None:
            split_stages(layers, mesh.get("pp", 1), model)
    tp = mesh.get("tp", 1)
    for field in HEAD_FIELDS if tp > 1 else ():
        heads = config.get(field)
        if isinstance(heads, int) and heads % tp:
            raise ConfigError(
                f"tp={tp} does not divide model {model}'s {field}={heads}: each rank must hold whole attention heads",
                f"use a tensor-parallel size that divides {heads}",
            )


def split_stages(layers: int, stages: int, model: str) -> list[range]:
    """Consecutive, equal block ranges, one per pipeline stage; refuse an uneven split."""
    if layers < stages or layers % stages:
        raise ConfigError(
            f"model {model} has {layers} blocks, which do not split into {stages} equal pipeline stages",
            "use a number of processes (stages) that divides the block count, or another model.config.num_hidden_layers",
        )
    per = layers // stages
    return [range(stage * per, (stage + 1) * per) for stage in range(stages)]


@dataclass(frozen=True)
class PipelineAdapter:
    """How one task-model class runs as pipeline stages.

    A stage is ``embed`` (first stage only), its slice of blocks, ``head`` (last stage
    only). Between stages travel the hidden states and the 2-D attention mask; each
    stage rebuilds the blocks' keyword arguments (4-D mask, rotary embeddings) from
    them with ``context``. ``first``/``last``/``shared`` are the dotted paths of the
    submodules each kind of stage keeps; the others are freed on that rank.
    """

    first: tuple[str, ...]
    last: tuple[str, ...]
    shared: tuple[str, ...]
    embed: Callable[[Mapping[str, Any], Any], Any]
    context: Callable[[Mapping[str, Any], Any, Any, Any], dict[str, Any]]
    head: Callable[[Mapping[str, Any], Any], Any]


def _bert_context(parts: Mapping[str, Any], config: Any, hidden: Any, mask: Any) -> dict[str, Any]:
    from transformers.masking_utils import create_bidirectional_mask

    return {"attention_mask": create_bidirectional_mask(config=config, inputs_embeds=hidden, attention_mask=mask)}


def _llama_context(parts: Mapping[str, Any], config: Any, hidden: Any, mask: Any) -> dict[str, Any]:
    import torch
    from transformers.masking_utils import create_causal_mask

    positions = torch.arange(hidden.shape[1], device=hidden.device).unsqueeze(0)
    causal = create_causal_mask(config=config, inputs_embeds=hidden, attention_mask=mask, cache=None, position_ids=positions)
    return {"attention_mask": causal, "position_ids": positions, "position_embeddings": parts["model.rotary_emb"](hidden, position_ids=positions)}


_BERT_CLASSIFIER = PipelineAdapter(
    first=("bert.embeddings",),
    last=("bert.pooler", "dropout", "classifier"),
    shared=(),
    embed=lambda parts, input_ids: parts["bert.embeddings"](input_ids=input_ids),
    context=_bert_context,
    head=lambda parts, hidden: parts["classifier"](parts["dropout"](parts["bert.pooler"](hidden))),
)

_LLAMA_CAUSAL_LM = PipelineAdapter(
    first=("model.embed_tokens",),
    last=("model.norm", "lm_head"),
    shared=("model.rotary_emb",),
    embed=lambda parts, input_ids: parts["model.embed_tokens"](input_ids),
    context=_llama_context,
    head=lambda parts, hidden: parts["lm_head"](parts["model.norm"](hidden)),
)

#: Task-model class name -> its pipeline adapter. Llama-shaped decoders share one.
PIPELINE_ADAPTERS: Mapping[str, PipelineAdapter] = {
    "BertForSequenceClassification": _BERT_CLASSIFIER,
    "LlamaForCausalLM": _LLAMA_CAUSAL_LM,
    "MistralForCausalLM": _LLAMA_CAUSAL_LM,
    "Qwen2ForCausalLM": _LLAMA_CAUSAL_LM,
}


def pipeline_adapter(module: Any) -> PipelineAdapter:
    """The adapter for ``module``'s task-model class, or a one-line refusal."""
    name = type(hf_model(module)).__name__
    if name not in PIPELINE_ADAPTERS:
        raise Unsupported(
            f"pp: no pipeline-stage adapter for {describe(module)} (known: {', '.join(sorted(PIPELINE_ADAPTERS))})",
            "use scenario.distributed.strategy=fsdp or ddp, or add an adapter to harness.training.architectures.PIPELINE_ADAPTERS",
        )
    return PIPELINE_ADAPTERS[name]
