"""Calibration samples: real examples from the dataset's train split, never random tokens.

Static quantization sets activation ranges from what the model sees during
calibration. Random token ids give attention patterns and activation ranges that real
text never produces, so the ranges (and the measured accuracy) would describe another
model. Here calibration draws a seeded sample of the *train* split (the eval split
stays untouched for accuracy) and fingerprints it, so the compressed-artifact cache
key changes whenever the samples do.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Calibration:
    """What ``Backend.compress`` receives besides the artifact and the recipe.

    ``batches``: model inputs only (no labels), ``batch_size`` rows each, from the train
    split. ``samples``: how many examples in all. ``fingerprint``: their sha256 prefix.
    ``workdir``: an empty folder the backend writes the compressed files into; the
    artifact pipeline owns it and moves it into the cache once ``compress`` returns, so
    the next run with the same recipe, data and source reuses the files.
    """

    batches: list[dict[str, np.ndarray]]
    samples: int
    fingerprint: str
    workdir: Path
    split: str = "train"
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """The record's view: where the samples came from and how many."""
        return {"split": self.split, "samples": self.samples, "batches": len(self.batches), "fingerprint": self.fingerprint}


def fingerprint(batches: list[dict[str, np.ndarray]]) -> str:
    """sha256 prefix over the batches' arrays (names, dtypes, shapes, bytes)."""
    digest = hashlib.sha256()
    for batch in batches:
        for name, array in sorted(batch.items()):
            array = np.ascontiguousarray(array)
            digest.update(f"{name}|{array.dtype.str}|{array.shape}".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()[:20]


def sample_batches(data: Any, samples: int, batch_size: int = 8, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``samples`` shuffled train examples (fewer if the split is smaller) as input batches."""
    if samples < 1:
        raise ValueError(f"calibration needs at least 1 sample, got {samples}")
    names = data.input_names
    return [{name: np.ascontiguousarray(batch[name]) for name in names} for batch in data.batches("train", batch_size, shuffle=True, seed=seed, limit=samples)]


def calibration_set(data: Any, samples: int, workdir: Path, batch_size: int = 8, seed: int = 0) -> Calibration:
    """A :class:`Calibration` of ``samples`` real train examples writing into ``workdir``."""
    batches = sample_batches(data, samples, batch_size, seed)
    count = sum(len(next(iter(b.values()))) for b in batches)
    return Calibration(batches, count, fingerprint(batches), Path(workdir))
