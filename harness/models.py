"""Model sources: transformers configs (random init, offline) and local checkpoints.

Nothing here touches the Hugging Face Hub: models are built from a config dict
shipped in ``conf/model/`` or loaded from a local folder with
``from_pretrained(local_files_only=True)``, weights through safetensors only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from harness.errors import ConfigError
from harness.validation import choice, require
from harness.families import BERT_DEFAULTS as BERT_DEFAULTS  # the checks' defaults, from the family table
from harness.families import FAMILIES as FAMILY_TABLE
from harness.families import family as family_of

#: Every ``model.family`` (:mod:`harness.families` says what each one is).
FAMILIES = tuple(FAMILY_TABLE)
_FIX_FOLDER = "point model.path (or model.checkpoint) at a folder written by save_pretrained"
_LAYER = re.compile(r"encoder\.layer\.(\d+)\.")


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
        choice(self.family, FAMILIES, "family")
        require(self.num_labels >= 1, "num_labels", f"must be >= 1, got {self.num_labels}")


@dataclass
class LoadedModel:
    """An eval-mode torch module that maps named inputs to logits, plus what describes it.

    A *deferred* model (:func:`load_model` with ``defer=True``) has everything but the
    module, read from its model card (:mod:`harness.model_cards`); ``module`` is built on
    first use. A run whose artifacts are all cached (an ONNX backend reusing its export,
    eager references cached) then never imports transformers' model code or initialises
    110M random weights: seconds of every run's fixed cost.
    """

    name: str
    module: Any
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    source: str
    params: int
    config: dict[str, Any]
    tokenizer: Any = None
    #: The card's weights digest and structure while the module is not built.
    card: Optional[dict[str, Any]] = field(default=None, repr=False, compare=False)
    #: Builds the module of a deferred model (on first access to ``module``).
    build: Optional[Callable[[], Any]] = field(default=None, repr=False, compare=False)

    def __getattr__(self, name: str) -> Any:
        # Reached only for attributes that are not set: ``module`` of a deferred model.
        build = self.__dict__.get("build")
        if name != "module" or build is None:
            raise AttributeError(name)
        self.__dict__["module"] = build()
        return self.__dict__["module"]

    @property
    def built(self) -> bool:
        """Whether the torch module exists (a deferred model builds it on first use)."""
        return "module" in self.__dict__

    def weights_digest(self) -> str:
        """sha256 over every parameter and buffer: the identity of the weights for caches
        (a deferred model's card holds it until the module is built)."""
        if not self.built and self.card is not None:
            return str(self.card["digest"])
        return module_digest(self.module)

    def structure(self) -> str:
        """The module's ``repr`` (layer types and sizes), without building a deferred one."""
        if not self.built and self.card is not None:
            return str(self.card["structure"])
        return repr(self.module)


def module_digest(module: Any) -> str:
    """sha256 over every parameter and buffer of a torch module, in name order."""
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def transformers_model(module: Any) -> Any:
    """The transformers model: ``module`` itself when it is one (it has a ``config``; decoders
    are used unwrapped), else the one inside the harness's logits wrapper (``.model``)."""
    return module if hasattr(module, "config") else getattr(module, "model", module)


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

    return (ImageLogits() if family_of(family).input_names == ImageLogits.input_names else TextLogits()).eval()


def _from_config(options: ModelOptions) -> tuple[Any, str]:
    import torch

    torch.manual_seed(options.seed)
    return family_of(options.family).build(options.config, options.num_labels), f"config:{options.name}"


# --- checkpoint folders: checked before anything is built ---------------------------------


def folder_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint folder; a :class:`ConfigError` naming the
    fix when it is missing, truncated or not a JSON object."""
    folder = Path(folder).expanduser()
    path = folder / "config.json"
    if not path.is_file():
        raise ConfigError(f"model path '{folder}' is not a checkpoint folder (no config.json)", _FIX_FOLDER)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        detail = " ".join(str(exc).split())[:120]
        raise ConfigError(
            f"{path} is not valid JSON ({detail}): the checkpoint is truncated or damaged",
            "re-save the model with save_pretrained, or restore config.json from the original",
        ) from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path} holds a JSON {type(config).__name__}, not a model config object", "re-save the model with save_pretrained")
    return config


def num_labels_of(config: dict[str, Any], default: int) -> int:
    """How many classes a transformers config's classification head has."""
    id2label = config.get("id2label")
    if isinstance(id2label, dict) and id2label:
        return len(id2label)
    value = config.get("num_labels")
    return value if isinstance(value, int) and value >= 1 else default


def check_folder(folder: str | os.PathLike[str], family: str) -> dict[str, Any]:
    """Check a checkpoint folder without loading it; return its config.

    Cheap enough for the CLI's preflight (json and safetensors headers only, no torch):
    config.json parses; its ``model_type`` is ``family``'s; every ``*.safetensors`` file
    has a complete header (a 0-byte or truncated file fails); and the weights' shapes
    agree with the config (embedding width, layer count, FFN width, classes). Each
    problem is a :class:`ConfigError` with the fix.
    """
    folder = Path(folder).expanduser()
    config = folder_config(folder)
    model_type = config.get("model_type")
    if model_type is not None and model_type != family:
        fix = f"model.family={model_type}" if model_type in FAMILIES else f"point model.path at a {family} checkpoint"
        raise ConfigError(f"model.family={family} but {folder / 'config.json'} describes a '{model_type}' model", fix)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ConfigError(
            f"checkpoint '{folder}' has no .safetensors weights",
            "re-save it with save_pretrained(safe_serialization=True); pickled weights are not loaded",
        )
    shapes: dict[str, list[int]] = {}
    for path in files:
        shapes.update(_safetensors_shapes(path))
    problem = _shape_problem(family, config, shapes)
    if problem:
        raise ConfigError(
            f"checkpoint '{folder}' has weights that do not match its config.json: {problem}",
            "use the config.json saved together with these weights (save_pretrained writes both)",
        )
    return config


def _safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape from a safetensors header (reads the header, not the data)."""
    from safetensors import SafetensorError, safe_open

    if path.stat().st_size == 0:
        raise ConfigError(
            f"weights file {path} is empty (0 bytes): the checkpoint was not saved completely", "re-save the model with save_pretrained, or copy the file again"
        )
    try:
        with safe_open(str(path), framework="numpy") as handle:
            return {name: list(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        detail = " ".join(str(exc).split())[:160]
        raise ConfigError(
            f"weights file {path} is not a complete safetensors file ({detail})", "re-save the model with save_pretrained, or copy the file again"
        ) from None


def _shape_problem(family: str, config: dict[str, Any], shapes: dict[str, list[int]]) -> Optional[str]:
    """The first disagreement between a config and the weight shapes, as one phrase."""

    def get(key: str) -> Any:
        return config.get(key, family_of(family).config_defaults.get(key))

    labels = num_labels_of(config, 2)
    if family == "bert":
        hidden = get("hidden_size")
        expected = {
            "embeddings.word_embeddings.weight": ([get("vocab_size"), hidden], "vocab_size, hidden_size"),
            "embeddings.position_embeddings.weight": ([get("max_position_embeddings"), hidden], "max_position_embeddings, hidden_size"),
            "encoder.layer.0.intermediate.dense.weight": ([get("intermediate_size"), hidden], "intermediate_size, hidden_size"),
            "classifier.weight": ([labels, hidden], "num_labels, hidden_size"),
        }
        layers = {int(m.group(1)) for name in shapes if (m := _LAYER.search(name))}
        if layers and len(layers) != get("num_hidden_layers"):
            return f"the weights have {len(layers)} encoder layers, the config num_hidden_layers={get('num_hidden_layers')}"
    elif family == "resnet":
        sizes = config.get("hidden_sizes") or [None]
        expected = {
            "embedder.embedder.convolution.weight": ([config.get("embedding_size"), config.get("num_channels")], "embedding_size, num_channels"),
            "classifier.1.weight": ([labels, sizes[-1]], "num_labels, hidden_sizes[-1]"),
        }
    else:  # decoders: a mismatch surfaces when the weights load (a config error there too)
        expected = {}
    for suffix, (want, keys) in expected.items():
        name = next((n for n in shapes if n == suffix or n.endswith("." + suffix)), None)
        if name is None:
            continue
        got = shapes[name][: len(want)]
        if any(w is not None and w != g for w, g in zip(want, got)):
            return f"{name} is {shapes[name]}, the config says {[w if w is not None else '?' for w in want]} ({keys})"
    return None


def _from_folder(path: str, options: ModelOptions) -> tuple[Any, str, Any]:
    import transformers

    folder = Path(path).expanduser()
    check_folder(folder, options.family)
    auto = family_of(options.family).folder_loader()
    try:
        model, info = auto.from_pretrained(folder, local_files_only=True, use_safetensors=True, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as exc:  # what from_pretrained raises for a bad folder
        detail = " ".join(str(exc).split())[:200]
        raise ConfigError(
            f"cannot load the checkpoint in '{folder}' as a {options.family} model: {detail}",
            "check model.family and that config.json and the weights were saved together",
        ) from None
    problem = _loading_problem(info)
    if problem:
        raise ConfigError(
            f"checkpoint '{folder}' does not fit its model: {problem}", "use the config.json saved together with these weights (save_pretrained writes both)"
        )
    tokenizer = None
    if family_of(options.family).tokenizer and (folder / "tokenizer.json").is_file():
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return model, f"checkpoint:{folder}", tokenizer


def _loading_problem(info: dict[str, Any]) -> Optional[str]:
    """A phrase naming weights ``from_pretrained`` had to invent or could not place.

    A missing classification head alone is fine (a base checkpoint being fine-tuned
    gets a fresh head); any other missing or mismatched weight would silently run a
    partly random model.
    """
    missing = [k for k in info.get("missing_keys", []) if not k.startswith("classifier")]
    mismatched = [str(k[0] if isinstance(k, (tuple, list)) else k) for k in info.get("mismatched_keys", [])]
    if mismatched:
        return f"{len(mismatched)} weights have other shapes than the config gives (e.g. {mismatched[0]})"
    if missing:
        return f"{len(missing)} weights are missing from the checkpoint (e.g. {missing[0]}) and would be random"
    return None


def load_model(options: ModelOptions, checkpoint: str | None = None, *, defer: bool = False, cache_root: str | None = None) -> LoadedModel:
    """Build the model ``options`` describe, from ``checkpoint`` (a folder) when given.

    ``defer``: a randomly initialised model whose card is cached (under ``cache_root``)
    comes back without its module, which is built on first use (:class:`LoadedModel`).
    Every randomly initialised model that is built gets its card written.
    """
    from harness import model_cards

    folder = checkpoint or options.path
    if defer and not folder:
        card = model_cards.read(options, cache_root)
        if card is not None:
            return _deferred(options, card, cache_root)
    loaded = _build(options, folder)
    if not folder:
        model_cards.write_if_missing(options, loaded, cache_root)
    return loaded


def _deferred(options: ModelOptions, card: dict[str, Any], cache_root: str | None) -> LoadedModel:
    from harness import model_cards, stages

    def build() -> Any:
        with stages.timed("model_build"):
            module = _build(options, None).module
        model_cards.check_built(options, card, module, cache_root)
        return module

    model = LoadedModel(
        name=options.name,
        module=None,
        input_names=family_of(options.family).input_names,
        output_names=("logits",),
        source=f"config:{options.name}",
        params=int(card["params"]),
        config=card["config"],
        card=card,
        build=build,
    )
    del model.__dict__["module"]  # unset, so the first access builds it (LoadedModel.__getattr__)
    return model


def _build(options: ModelOptions, folder: str | None) -> LoadedModel:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    transformers.utils.logging.disable_progress_bar()  # no bars between the harness's stage lines
    tokenizer = None
    if folder:
        model, source, tokenizer = _from_folder(folder, options)
    else:
        model, source = _from_config(options)
    model.eval()
    family = family_of(options.family)
    names = family.input_names
    return LoadedModel(
        name=options.name,
        # A decoder stays the transformers causal LM: generation drives its KV cache itself.
        module=model if family.kind == "decoder" else _logits_only(model, options.family),
        input_names=names,
        output_names=("logits",),
        source=source,
        params=sum(p.numel() for p in model.parameters()),
        config=model.config.to_dict(),
        tokenizer=tokenizer,
    )
