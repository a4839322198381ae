"""Model families in one table: everything the core knows about ``model.family``.

Each :class:`ModelFamily` says how to build a model from a config (random init, offline)
and from a local folder, which named inputs it takes, which dataset tasks it fits,
which preflight shape checks apply and the transformers defaults they read, a memory
lower bound for a batch, the train recipe ``model.checkpoint=auto`` runs, the way it
is exported, and the model type compression recipes use. Models, preflight,
checkpoints and compression read this table; none of them branch on a family's name.

The decoder LLM families come from :data:`harness.generation.decoders.DECODER_FAMILIES`
(their config and model classes); a local folder of any causal LM loads whatever its
architecture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from harness.generation.decoders import DECODER_FAMILIES

#: Bytes a forward pass needs at least: ``(config, batch, seq_len, image_size) -> bytes``.
MemoryBound = Callable[[Mapping[str, Any], int, int, int], int]


def _bert_memory(config: Mapping[str, Any], batch: int, seq_len: int, image_size: int) -> int:
    """fp32 embedding weights plus the largest single activation (attention scores or FFN)."""
    hidden = int(config.get("hidden_size") or 0)
    heads = int(config.get("num_attention_heads") or 1)
    ffn = int(config.get("intermediate_size") or 0)
    weights = int(config.get("vocab_size") or 0) * hidden * 4
    largest = max(heads * seq_len * seq_len, ffn * seq_len, hidden * seq_len) * 4
    return weights + batch * (largest + 2 * seq_len * 8)


def _resnet_memory(config: Mapping[str, Any], batch: int, seq_len: int, image_size: int) -> int:
    """The input image and the stem's feature map, fp32."""
    width = int(config.get("embedding_size") or 1)
    channels = int(config.get("num_channels") or 1)
    side = max(1, image_size // 2)
    return batch * (width * side * side + channels * image_size * image_size) * 4


@dataclass(frozen=True)
class ModelFamily:
    """What the core needs to know about one ``model.family``.

    ``kind``: ``classifier`` (named inputs -> logits, exported as such) or ``decoder``
    (a causal LM the generation kinds drive, exported with its KV cache).
    ``tasks``: the dataset tasks it can be fed. ``checks``: preflight shape checks
    (``heads``: hidden size divisible by heads; ``positions``: sequence length within
    the position embeddings), reading ``config_defaults`` for keys a config leaves out.
    """

    name: str
    kind: str
    config_class: str
    model_class: str
    folder_class: str
    input_names: tuple[str, ...]
    tasks: frozenset[str]
    checks: tuple[str, ...] = ()
    config_defaults: Mapping[str, Any] = field(default_factory=dict)
    memory: Optional[MemoryBound] = None
    train_recipe: Optional[str] = None
    compression_type: str = "transformer"
    tokenizer: bool = True
    takes_num_labels: bool = True

    @property
    def export(self) -> str:
        """How the artifact stage exports it: ``logits`` or ``decoder-with-past``."""
        return "decoder-with-past" if self.kind == "decoder" else "logits"

    def build(self, config: Mapping[str, Any], num_labels: int) -> Any:
        """A randomly initialised transformers model (seed the RNG before calling)."""
        import transformers

        extra = {"num_labels": num_labels} if self.takes_num_labels else {}
        cfg = getattr(transformers, self.config_class)(**extra, **config)
        return getattr(transformers, self.model_class)(cfg)

    def folder_loader(self) -> Any:
        """The transformers ``Auto*`` class that loads a local folder of this family."""
        import transformers

        return getattr(transformers, self.folder_class)


#: transformers' ``BertConfig`` defaults for the keys the checks read (a test keeps them
#: equal to the library's), so a model config that leaves one out is checked too.
BERT_DEFAULTS = {
    "vocab_size": 30522,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
}

TEXT = ("input_ids", "attention_mask")

FAMILIES: dict[str, ModelFamily] = {
    "bert": ModelFamily(
        "bert",
        "classifier",
        "BertConfig",
        "BertForSequenceClassification",
        "AutoModelForSequenceClassification",
        TEXT,
        frozenset({"text-classification"}),
        checks=("heads", "positions"),
        config_defaults=BERT_DEFAULTS,
        memory=_bert_memory,
        train_recipe="bert_train",
        compression_type="transformer",
    ),
    "resnet": ModelFamily(
        "resnet",
        "classifier",
        "ResNetConfig",
        "ResNetForImageClassification",
        "AutoModelForImageClassification",
        ("pixel_values",),
        frozenset({"image-classification"}),
        memory=_resnet_memory,
        train_recipe="resnet_train",
        compression_type="cnn",
        tokenizer=False,
    ),
    **{
        name: ModelFamily(
            name,
            "decoder",
            decoder.config_class,
            decoder.model_class,
            "AutoModelForCausalLM",
            TEXT,
            frozenset({"causal-lm"}),
            train_recipe="llm_train",
            takes_num_labels=False,
        )
        for name, decoder in DECODER_FAMILIES.items()
    },
}


def family(name: str) -> ModelFamily:
    """The table's entry for ``name`` (``ModelOptions`` has already checked it exists)."""
    return FAMILIES[name]
