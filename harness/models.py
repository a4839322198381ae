"""Model sources: transformers configs (random init, offline) and local checkpoints.

Nothing here touches the Hugging Face Hub: models are built from a config dict
shipped in ``conf/model/`` or loaded from a local folder with
``from_pretrained(local_files_only=True)``, weights through safetensors only.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from harness.errors import ConfigError
from harness.generation.decoders import DECODER_FAMILIES

#: bert, resnet: classifiers; the decoder LLM families come from their one table.
FAMILIES = ("bert", "resnet", *DECODER_FAMILIES)


@dataclass
class ModelOptions:
    """The ``model`` config node.

    ``config`` holds transformers config fields (``hidden_size``, ``num_hidden_layers``
    ...) for a randomly initialised model; ``path`` loads a local checkpoint folder
    instead. ``checkpoint`` (``PATH`` or ``auto``) points inference at trained weights.
    """

    name: str = "bert_small"
    family: str = "bert"
    path: Optional[str] = None
    checkpoint: Optional[str] = None
    num_labels: int = 2
    seed: int = 0
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from harness.config import choice, require

        choice(self.family, FAMILIES, "family")
        require(self.num_labels >= 1, "num_labels", f"must be >= 1, got {self.num_labels}")


@dataclass
class LoadedModel:
    """An eval-mode torch module that maps named inputs to logits, plus what describes it."""

    name: str
    module: Any
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    source: str
    params: int
    config: dict[str, Any]
    tokenizer: Any = None

    def weights_digest(self) -> str:
        """sha256 over every parameter and buffer: the identity of the weights for caches."""
        digest = hashlib.sha256()
        for key, tensor in sorted(self.module.state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()


def _logits_only(model: Any, family: str) -> Any:
    """Wrap a transformers model so it takes named tensors and returns the logits tensor.

    The forward signature names its inputs explicitly (no ``**kwargs``) so that
    ``torch.export`` and the dynamo ONNX exporter see one argument per input.
    """
    import torch

    class TextLogits(torch.nn.Module):
        input_names = ("input_ids", "attention_mask")

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits

    class ImageLogits(torch.nn.Module):
        input_names = ("pixel_values",)

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: Any) -> Any:
            return self.model(pixel_values=pixel_values).logits

    return (ImageLogits() if family == "resnet" else TextLogits()).eval()


def _input_names(family: str) -> tuple[str, ...]:
    return ("pixel_values",) if family == "resnet" else ("input_ids", "attention_mask")


def _from_config(options: ModelOptions) -> tuple[Any, str]:
    import torch
    import transformers

    torch.manual_seed(options.seed)
    if options.family in DECODER_FAMILIES:
        return DECODER_FAMILIES[options.family].build(options.config), f"config:{options.name}"
    if options.family == "bert":
        cfg = transformers.BertConfig(num_labels=options.num_labels, **options.config)
        model = transformers.BertForSequenceClassification(cfg)
    else:
        cfg = transformers.ResNetConfig(num_labels=options.num_labels, **options.config)
        model = transformers.ResNetForImageClassification(cfg)
    return model, f"config:{options.name}"


def _from_folder(path: str, options: ModelOptions) -> tuple[Any, str, Any]:
    import transformers

    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"model path '{folder}' is not a checkpoint folder (no config.json)",
            "point model.path (or model.checkpoint) at a folder written by save_pretrained",
        )
    if not any(folder.glob("*.safetensors")):
        raise ConfigError(
            f"checkpoint '{folder}' has no .safetensors weights",
            "re-save it with save_pretrained(safe_serialization=True); pickled weights are not loaded",
        )
    auto = {"resnet": transformers.AutoModelForImageClassification, "bert": transformers.AutoModelForSequenceClassification}.get(
        options.family, transformers.AutoModelForCausalLM)  # any other family is a decoder
    model = auto.from_pretrained(folder, local_files_only=True, use_safetensors=True)
    tokenizer = None
    if options.family != "resnet" and (folder / "tokenizer.json").is_file():
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return model, f"checkpoint:{folder}", tokenizer


def load_model(options: ModelOptions, checkpoint: str | None = None) -> LoadedModel:
    """Build the model ``options`` describe, from ``checkpoint`` (a folder) when given."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    transformers.utils.logging.disable_progress_bar()  # no bars between the harness's stage lines
    folder = checkpoint or options.path
    tokenizer = None
    if folder:
        model, source, tokenizer = _from_folder(folder, options)
    else:
        model, source = _from_config(options)
    model.eval()
    names = _input_names(options.family)
    return LoadedModel(
        name=options.name,
        # A decoder stays the transformers causal LM: generation drives its KV cache itself.
        module=model if options.family in DECODER_FAMILIES else _logits_only(model, options.family),
        input_names=names,
        output_names=("logits",),
        source=source,
        params=sum(p.numel() for p in model.parameters()),
        config=model.config.to_dict(),
        tokenizer=tokenizer,
    )
