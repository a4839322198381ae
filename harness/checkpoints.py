"""Trained checkpoints in the artifact cache, and ``model.checkpoint=PATH|auto``.

A training run saves its model (safetensors + config) and the tokenizer it trained
with into ``<cache>/checkpoints/<key>/``; the key covers the model (config, init seed,
source folder), the dataset's fingerprint and the training recipe (every option that
changes the weights), so a changed input never reuses a stale checkpoint.

``model.checkpoint=auto`` asks for the checkpoint that the family's train recipe
(``bert_train`` for BERT, ``resnet_train`` for ResNet, ``llm_train`` for the decoder
LLMs) produces for this model and dataset. The recipe's options are read from its YAML in ``conf/scenario/`` through
Hydra's compose API, so ``harness +scenario=bert_train`` and ``auto`` compute the same
key: a checkpoint trained by either is reused by both, and ``auto`` trains it once
when absent. A folder is complete only once its marker file exists; it is written
into a temp folder and renamed into place, so an interrupted save is never used.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

from harness import cache
from harness.errors import ConfigError, HarnessError, Unsupported

if TYPE_CHECKING:
    from harness.backend import Backend
    from harness.data import DatasetOptions
    from harness.models import LoadedModel, ModelOptions
    from harness.training.options import TrainingOptions

KIND = "checkpoints"
MARKER = "harness_checkpoint.json"
#: The train recipe (a ``conf/scenario/`` name) whose output ``auto`` means, per model family.
RECIPES = {"bert": "bert_train", "resnet": "resnet_train", "llama": "llm_train", "gpt2": "llm_train"}


def model_identity(options: "ModelOptions") -> dict[str, Any]:
    """What determines a model's initial weights; the display name does not."""
    identity: dict[str, Any] = {"family": options.family, "num_labels": options.num_labels,
                                "seed": options.seed, "config": options.config, "path": None}
    if options.path:
        folder = Path(options.path).expanduser().resolve()
        files = sorted(folder.glob("*.safetensors"))
        identity["path"] = [str(folder), [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]]
    return identity


def checkpoint_key(model: "ModelOptions", data_fingerprint: str, recipe: "TrainingOptions",
                   extra: Optional[dict[str, Any]] = None) -> str:
    """The cache key of the checkpoint ``recipe`` trains from ``model`` on that data."""
    from harness.training.options import MEASUREMENT_ONLY

    weights_relevant = {k: v for k, v in asdict(recipe).items() if k not in MEASUREMENT_ONLY}
    weights_relevant["distributed"] = recipe.distributed.weights_identity()
    return cache.content_key("checkpoint/1", model_identity(model), data_fingerprint, weights_relevant, extra or {})


def find(key: str, cache_root: str | os.PathLike[str] | None) -> Optional[Path]:
    """The complete, intact checkpoint folder for ``key``, or None.

    Intact means its files match the checksums :func:`save` stored (:mod:`harness.cache`);
    a damaged checkpoint is discarded with a warning, so ``auto`` trains a new one.
    """
    folder = cache.cache_dir(cache_root) / KIND / key
    if cache.folder_verified(folder, (MARKER,)):
        return folder
    if folder.is_dir() and any(folder.iterdir()):
        cache.discard(folder, "does not match its checksums (truncated or corrupted)")
    return None


def save(model: "LoadedModel", tokenizer: Any, key: str, cache_root: str | os.PathLike[str] | None,
         meta: dict[str, Any]) -> Path:
    """Write model (safetensors), config, tokenizer and a marker; return the folder.

    Built in a staging folder, sealed with checksums and renamed into place
    (:mod:`harness.cache`); a previous checkpoint under the same key is replaced only
    once the new one is complete.
    """
    from harness.training.architectures import hf_model as transformers_model

    # A decoder is saved whole: its ``.model`` is the base *without* the LM head.
    hf_model = transformers_model(model.module)
    if not hasattr(hf_model, "save_pretrained"):
        raise Unsupported(f"model {model.name} cannot be saved as a checkpoint (no save_pretrained)",
                          "train a transformers model (family bert, resnet, llama or gpt2)")
    final = cache.cache_dir(cache_root) / KIND / key
    with cache.staging(KIND, key, cache_root) as staging:
        with _quiet_transformers():
            # Host copies of the weights: safetensors cannot read device (CUDA, XLA) tensors.
            host_state = {k: v.detach().cpu() for k, v in hf_model.state_dict().items()}
            hf_model.save_pretrained(staging, safe_serialization=True, state_dict=host_state)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        (staging / MARKER).write_text(json.dumps({"key": key, "saved": time.time(), **meta}, indent=2, default=str))
        cache.publish(staging, final, (MARKER,), replace=True)
    return final


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No "Writing model shards" bar in the middle of the harness's own progress lines."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def recipe_options(family: str) -> "TrainingOptions":
    """The train recipe of ``family``, composed from its YAML exactly as the CLI would."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from harness.config import typed
    from harness.training.options import TrainingOptions

    name = RECIPES.get(family)
    if name is None:
        raise Unsupported(f"no train recipe for model family '{family}', so model.checkpoint=auto cannot train one",
                          "train one and pass model.checkpoint=PATH")
    overrides = [f"+scenario={name}"]
    if GlobalHydra.instance().is_initialized():  # inside the harness CLI's Hydra app
        cfg = compose(config_name="config", overrides=overrides)
    else:
        with initialize_config_module(config_module="harness.conf", version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
    section = OmegaConf.to_container(cfg.scenario, resolve=True)
    section.pop("name", None)
    section.pop("kind", None)
    return typed(TrainingOptions, section, "scenario")


def training_backend(trainer: "Backend | None") -> "Backend":
    """``trainer`` when it can train, else the first registered backend that can, with its defaults."""
    if trainer is not None and trainer.capabilities().training:
        return trainer
    from harness.config import typed
    from harness.plugins import get_plugins

    for name, cls in get_plugins().registry.backends.items():
        options = typed(cls.options_type, {}, "backend")
        if cls.probe(options).available:
            backend = cls(options)
            if backend.capabilities().training:
                return backend
    raise Unsupported("model.checkpoint=auto must train a checkpoint but no installed backend can train",
                      "install torch (backend=pytorch) or pass model.checkpoint=PATH")


def resolve(
    model_options: "ModelOptions",
    dataset_options: "DatasetOptions",
    cache_root: str | os.PathLike[str] | None,
    status: Callable[[str], None] = print,
    *,
    trainer: "Backend | None" = None,
) -> Optional[Path]:
    """The checkpoint folder ``model_options.checkpoint`` names; None when unset.

    ``PATH`` is checked and returned. ``auto`` returns the cached checkpoint of the
    family's train recipe for this model and dataset, training it first when absent
    (on ``trainer`` if it declares training, else on the first backend that does).
    """
    requested = model_options.checkpoint
    if not requested:
        return None
    if requested != "auto":
        folder = Path(requested).expanduser()
        if not (folder / "config.json").is_file():
            raise ConfigError(f"model.checkpoint '{folder}' is not a checkpoint folder (no config.json)",
                              "point it at a folder written by save_pretrained, or use model.checkpoint=auto")
        return folder

    from harness.data import load_dataset
    from harness.training.job import train_recipe

    recipe_name = RECIPES.get(model_options.family, "?")
    recipe = recipe_options(model_options.family)
    base = replace(model_options, checkpoint=None)
    data = load_dataset(dataset_options, seq_len=recipe.seq_len, tokenizer=_tokenizer_of(base, cache_root))
    key = checkpoint_key(base, data.fingerprint(), recipe)
    found = find(key, cache_root)
    if found is not None:
        status(f"model.checkpoint=auto: reusing {found}")
        return found
    if recipe.distributed.world_size > 1:
        raise Unsupported(f"the {recipe_name} recipe is distributed; auto trains in one process",
                          f"train it first with harness +scenario={recipe_name}")
    backend = training_backend(trainer)
    with _training_lock(key, cache_root):
        found = find(key, cache_root)  # another run may have trained it while we waited
        if found is not None:
            status(f"model.checkpoint=auto: reusing {found} (trained by a concurrent run)")
            return found
        status(f"model.checkpoint=auto: no {recipe_name} checkpoint for {model_options.name} yet; "
               f"training it once on {backend.name} (cached for later runs)")
        result = train_recipe(backend, base, dataset_options, recipe, cache_root=cache_root, data=data,
                              report=status, label=f"auto-training {model_options.name}")
    path = result["training"].get("checkpoint")
    if not path:
        raise HarnessError("auto-training finished without saving a checkpoint")
    metric = result["training"]["eval_metric"]
    status(f"model.checkpoint=auto: trained to {metric} {result['training'][f'final_{metric}']:.4f}, saved {path}")
    return Path(path)


@contextlib.contextmanager
def _training_lock(key: str, cache_root: str | os.PathLike[str] | None) -> Iterator[None]:
    """An exclusive ``flock`` per checkpoint key, so concurrent runs sharing a cache train it once.

    Where the cache's filesystem refuses ``flock`` the runs go ahead unlocked: the
    atomic rename in :func:`save` still keeps every reader on a complete checkpoint.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    path = cache.cache_dir(cache_root) / KIND / f".{key}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError:
            yield
            return
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _tokenizer_of(options: "ModelOptions", cache_root: str | os.PathLike[str] | None) -> Any:
    """The tokenizer the recipe's data is made with, as training will pick it: a local
    model folder's own (text models), else the embedded one of the family (None for
    BERT's word-level one, the corpus BPE for decoders)."""
    from harness.generation.tokenizer import text_tokenizer

    own = None
    folder = Path(options.path).expanduser() if options.path else None
    if options.family != "resnet" and folder is not None and (folder / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        own = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    return text_tokenizer(options.family, own, None if cache_root is None else str(cache_root))
