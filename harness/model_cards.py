"""Model cards: what describes a randomly initialised model, so a run can start without it.

Building ``bert_base`` from its config costs seconds on a small CPU (importing
transformers' model code, then initialising 110M random weights), and an ONNX backend
that reuses a cached export needs none of it: the export key needs the config and the
weights digest, the record needs the parameter count. The first build of each model
writes those facts to a card (``<cache>/models/<key>.json``, sealed with a checksum);
later runs read the card and build the module only if something asks for it
(:class:`harness.models.LoadedModel`).

A card is keyed by everything that determines the random weights: family, config,
labels, seed and the torch, transformers and harness versions. Random initialisation is
deterministic for those, and every deferred build checks it: a spot digest of the built
weights must equal the card's, else the card is removed and the run ends with an error
rather than caching results under another model's identity.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

from harness.identity import harness_version, package_versions
from harness import cache
from harness.errors import HarnessError

#: Bump when the card's fields or the way they are computed change.
CARD_FORMAT = "model-card/1"
#: Values of each tensor that the spot digest reads (from its start).
_SPOT_VALUES = 1024


def _versions() -> dict[str, str]:
    return {**package_versions(("torch", "transformers")), "harness": harness_version()}


def card_path(options: Any, cache_root: str | None = None) -> Path:
    """Where the card of the randomly initialised model ``options`` describes is kept."""
    key = cache.content_key(CARD_FORMAT, options.family, options.config, options.num_labels, options.seed, _versions())
    return cache.cache_dir(cache_root) / "models" / f"{key}.json"


def read(options: Any, cache_root: str | None = None) -> Optional[dict[str, Any]]:
    """The card of ``options``' model, or None when there is none yet or it is damaged
    (a damaged card is removed after one warning line and written again by the next build)."""
    path = card_path(options, cache_root)
    if not path.is_file():
        return None
    try:
        card = json.loads(path.read_text(encoding="utf-8")) if cache.verified(path) else None
    except (OSError, ValueError):
        card = None
    if not isinstance(card, dict) or not {"params", "config", "digest", "spot", "structure"} <= set(card):
        cache.discard(path, "does not match its checksum or misses fields")
        return None
    return card


def spot_digest(module: Any) -> str:
    """sha256 over the names and first values of every parameter and buffer: cheap (a
    5 GB model is read in milliseconds) and enough to see other random weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().reshape(-1)[:_SPOT_VALUES].cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def write_if_missing(options: Any, loaded: Any, cache_root: str | None = None) -> None:
    """Write the card of a freshly built random-init model, unless it has one. A config
    that does not survive JSON unchanged gets no card (its model is always built)."""
    path = card_path(options, cache_root)
    if path.is_file() and cache.verified(path):
        return
    config = json.loads(json.dumps(loaded.config, default=str))
    if cache.content_key(config) != cache.content_key(loaded.config):
        return
    card = {
        "format": CARD_FORMAT,
        "params": loaded.params,
        "config": config,
        "digest": loaded.weights_digest(),
        "spot": spot_digest(loaded.module),
        "structure": repr(loaded.module),
    }
    try:
        cache.atomic_write(path, json.dumps(card))
        cache.seal(path)
    except OSError:  # an unwritable cache: this model is simply built every run
        pass


def check_built(options: Any, card: dict[str, Any], module: Any, cache_root: str | None = None) -> None:
    """Raise if a deferred build gave other weights than the card describes (and remove it)."""
    if spot_digest(module) == card["spot"] and repr(module) == card["structure"]:
        return
    path = card_path(options, cache_root)
    path.unlink(missing_ok=True)
    raise HarnessError(
        f"building {options.name} from its config gave other weights than its cached model card {path} "
        "(random initialisation is not reproducible here); the card was removed",
        "run again (the next build writes a new card); report it if it happens twice",
    )
