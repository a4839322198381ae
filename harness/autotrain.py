"""The checkpoint stage: ``auto`` becomes a trained checkpoint before the scenario runs.

``model.checkpoint=auto`` (and options a scenario kind declares in
``checkpoint_options``, such as distillation's ``scenario.teacher``) ask for the
checkpoint the model family's train recipe produces for this model and dataset. The
runner calls :func:`resolve_auto` once per run, before the scenario: it reuses the
cached checkpoint (:mod:`harness.checkpoints`) or trains it once, under a per-key lock
so that concurrent runs sharing a cache train it once. The recipe's options arrive in
the run spec (``spec.auto_recipe``), composed from its YAML by the CLI like any
``+scenario=<recipe>``, so ``harness +scenario=bert_train`` and ``auto`` compute the same key.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional

from harness import checkpoints
from harness.backend import Backend
from harness.config import RunSpec, TrainRecipe
from harness.data import DatasetOptions, load_dataset
from harness.errors import ConfigError, HarnessError, Unsupported
from harness.models import ModelOptions
from harness.registry import Registry
from harness.training.job import train_recipe
from harness.validation import typed


def needs_auto(spec: RunSpec, checkpoint_options: tuple[str, ...]) -> bool:
    """Whether this run names ``auto`` anywhere a checkpoint is read from."""
    if spec.model.checkpoint == "auto":
        return True
    return any(getattr(spec.scenario_options, key, None) == "auto" for key in checkpoint_options)


def first_trainer(registry: Registry) -> Backend:
    """The first registered backend that is available here and declares training, with its defaults."""
    for cls in registry.backends.values():
        options: Any = typed(cls.options_type, {}, "backend")
        if cls.probe(options).available:
            backend = cls(options)
            if backend.capabilities().training:
                return backend
    raise Unsupported("this run must train a model but no installed backend can train", "install torch (backend=pytorch) or pass model.checkpoint=PATH")


def resolve_auto(spec: RunSpec, trainer: Callable[[], Backend], status: Callable[[str], None] = print) -> Path:
    """The cached checkpoint of the family's train recipe for this model and dataset,
    trained first (on ``trainer()``) when absent."""
    recipe = spec.auto_recipe
    if recipe is None:
        raise ConfigError(
            f"model family '{spec.model.family}' has no train recipe, so 'auto' cannot train a checkpoint", "train one and pass model.checkpoint=PATH"
        )
    return auto_checkpoint(replace(spec.model, checkpoint=None), spec.dataset, spec.cache_dir, recipe, trainer, status)


def auto_checkpoint(
    model: ModelOptions,
    dataset: DatasetOptions,
    cache_root: Optional[str],
    recipe: TrainRecipe,
    trainer: Callable[[], Backend],
    status: Callable[[str], None] = print,
) -> Path:
    """Find or train the checkpoint ``recipe`` makes of ``model`` on ``dataset``."""
    options = recipe.options
    data = load_dataset(dataset, seq_len=options.seq_len, tokenizer=checkpoints.tokenizer_of(model, cache_root))
    key = checkpoints.checkpoint_key(model, data.fingerprint(), options)
    found = checkpoints.find(key, cache_root)
    if found is not None:
        status(f"model.checkpoint=auto: reusing {found}")
        return found
    if options.distributed.world_size > 1:
        raise Unsupported(f"the {recipe.name} recipe is distributed; auto trains in one process", f"train it first with harness +scenario={recipe.name}")
    backend = trainer()
    with checkpoints.training_lock(key, cache_root):
        found = checkpoints.find(key, cache_root)  # another run may have trained it while we waited
        if found is not None:
            status(f"model.checkpoint=auto: reusing {found} (trained by a concurrent run)")
            return found
        status(f"model.checkpoint=auto: no {recipe.name} checkpoint for {model.name} yet; training it once on {backend.name} (cached for later runs)")
        result = train_recipe(backend, model, dataset, options, cache_root=cache_root, data=data, report=status, label=f"auto-training {model.name}")
    path: Optional[str] = result["training"].get("checkpoint")
    if not path:
        raise HarnessError("auto-training finished without saving a checkpoint")
    metric = result["training"]["eval_metric"]
    status(f"model.checkpoint=auto: trained to {metric} {result['training'][f'final_{metric}']:.4f}, saved {path}")
    return Path(path)
