"""Typed options of the TensorRT backend, validated when they are built.

Kept apart from the rest of the package so that the config layer, the plan logic and
the tests can name the options without touching anything that imports TensorRT.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class TensorRTOptions:
    """Typed options of the TensorRT backend (``conf/backend/tensorrt.yaml``).

    ``max_batch`` / ``max_seq`` default to the scenario's batch size / sequence length,
    so the engine's optimization profile is exactly the measured shape unless the user
    asks for headroom. ``tf32`` is off so that "fp32" means IEEE fp32 (TensorRT enables
    TF32 by default, which would blur the fp32 reference against eager).
    """

    device_index: int = 0
    workspace_gb: float = 4.0
    builder_optimization_level: int = 3
    min_batch: int = 1
    max_batch: Optional[int] = None
    min_seq: int = 1
    max_seq: Optional[int] = None
    timing_cache: bool = True
    tf32: bool = False

    def __post_init__(self) -> None:
        def bad(key: str, rule: str) -> ValueError:
            return ValueError(f"tensorrt option '{key}' {rule}, got {getattr(self, key)!r}")

        for key in ("device_index", "builder_optimization_level", "min_batch", "min_seq"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad(key, "must be an integer")
        for key in ("max_batch", "max_seq"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise bad(key, "must be an integer or null")
        for key in ("timing_cache", "tf32"):
            if not isinstance(getattr(self, key), bool):
                raise bad(key, "must be true or false")
        if isinstance(self.workspace_gb, bool) or not isinstance(self.workspace_gb, (int, float)):
            raise bad("workspace_gb", "must be a number")
        if self.device_index < 0:
            raise bad("device_index", "must be >= 0")
        if not self.workspace_gb > 0:
            raise bad("workspace_gb", "must be > 0")
        if not 0 <= self.builder_optimization_level <= 5:
            raise bad("builder_optimization_level", "must be in 0..5")
        if self.min_batch < 1:
            raise bad("min_batch", "must be >= 1")
        if self.max_batch is not None and self.max_batch < self.min_batch:
            raise bad("max_batch", f"must be >= min_batch ({self.min_batch})")
        if self.min_seq < 1:
            raise bad("min_seq", "must be >= 1")
        if self.max_seq is not None and self.max_seq < self.min_seq:
            raise bad("max_seq", f"must be >= min_seq ({self.min_seq})")
