"""ONNX export as its own stage: dynamic axes, one self-contained file, cached, validated.

The cache key covers the model config, a digest of the weights, the export options
and the versions of the libraries that shape the graph, so the second run with the
same inputs reuses the file and any change rebuilds it. A cached file that fails
``onnx.checker`` is treated as corrupt and rebuilt, never trusted. Every export (fresh
or cached) is validated against eager PyTorch on a sample batch.
"""

from __future__ import annotations

import json
import logging
import warnings
import os
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from harness import cache
from harness.errors import HarnessError
from harness.models import LoadedModel

OPSET = 18
TOLERANCE = 1e-3


@dataclass(frozen=True)
class ExportResult:
    """Where the ONNX file is and what exporting (or reusing) it measured."""

    path: Path
    key: str
    seconds: float
    cached: bool
    max_abs_diff: float
    size_bytes: int

    def metrics(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 3),
            "cached": self.cached,
            "max_abs_diff": self.max_abs_diff,
            "size_bytes": self.size_bytes,
            "key": self.key,
        }


def _versions() -> dict[str, str]:
    out = {}
    for name in ("torch", "onnx", "onnxscript", "transformers"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "missing"
    return out


def _dynamic_shapes(input_names: tuple[str, ...]) -> dict[str, dict[int, Any]]:
    import torch

    batch = torch.export.Dim("batch", min=1, max=4096)
    if input_names == ("pixel_values",):
        return {"pixel_values": {0: batch}}
    sequence = torch.export.Dim("sequence", min=2, max=4096)
    return {name: {0: batch, 1: sequence} for name in input_names}


def _is_valid(path: Path) -> bool:
    import onnx

    try:
        onnx.checker.check_model(str(path))
        return True
    except Exception:
        return False


def eager_outputs(model: LoadedModel, batch: Mapping[str, np.ndarray]) -> np.ndarray:
    """Reference logits from the eager fp32 PyTorch module."""
    import torch

    with torch.inference_mode():
        tensors = {name: torch.from_numpy(np.ascontiguousarray(batch[name])) for name in model.input_names}
        return model.module(**tensors).float().numpy()


def onnx_outputs(path: Path, batch: Mapping[str, np.ndarray], input_names: tuple[str, ...]) -> np.ndarray:
    """Logits from ONNX Runtime's CPU provider (the reference runtime for validation)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {name: batch[name] for name in input_names})[0]


def export_onnx(
    model: LoadedModel,
    sample: Mapping[str, np.ndarray],
    cache_root: str | None = None,
    on_status: Any = None,
) -> ExportResult:
    """Export ``model`` to a cached, validated ONNX file and return where it is."""
    options = {"opset": OPSET, "dynamic": True, "dynamo": True, "inputs": list(model.input_names)}
    versions = _versions()
    key = cache.content_key(model.config, model.weights_digest(), options, versions)
    folder = cache.entry("onnx", key, cache_root)
    path = folder / "model.onnx"
    started = time.perf_counter()
    cached = path.is_file() and (folder / "meta.json").is_file() and _is_valid(path)
    if not cached:
        if on_status:
            on_status(f"exporting {model.name} to ONNX (cached afterwards under {folder})")
        _export(model, sample, folder, path)
    seconds = time.perf_counter() - started
    reference = eager_outputs(model, sample)
    exported = onnx_outputs(path, sample, model.input_names)
    diff = float(np.max(np.abs(reference - exported)))
    return validated_result(path, key, seconds, cached, diff, {"versions": versions, "options": options})


def validated_result(path: Path, key: str, seconds: float, cached: bool, diff: float, meta: dict[str, Any]) -> ExportResult:
    """The stage's end for any exported graph: refuse a diff beyond :data:`TOLERANCE`,
    record ``meta.json`` for a fresh export, and size every file of the export."""
    folder = path.parent
    if not diff <= TOLERANCE:
        raise HarnessError(
            f"exported ONNX differs from eager PyTorch by {diff:.3g} (tolerance {TOLERANCE})",
            f"delete {folder} and report the model config; the export is not trustworthy",
        )
    if not cached:
        (folder / "meta.json").write_text(json.dumps({"key": key, "export_seconds": seconds, **meta}, indent=2))
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file() and f.name.startswith(path.name))
    return ExportResult(path, key, seconds, cached, diff, size)


def _summary(exc: BaseException) -> str:
    """The informative line of an exporter error (torch wraps the cause in boilerplate)."""
    lines = [line for line in str(exc).splitlines() if line.startswith("<class ")]
    return lines[0] if lines else f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _export(model: LoadedModel, sample: Mapping[str, np.ndarray], folder: Path, path: Path) -> None:
    import torch

    kwargs = {name: torch.from_numpy(np.ascontiguousarray(sample[name])) for name in model.input_names}
    tmp = folder / f".tmp-{os.getpid()}.onnx"
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model.module,
                (),
                str(tmp),
                kwargs=kwargs,
                dynamo=True,
                dynamic_shapes=_dynamic_shapes(model.input_names),
                input_names=list(model.input_names),
                output_names=list(model.output_names),
                opset_version=OPSET,
                external_data=False,
                optimize=True,
                verbose=False,
            )
        os.replace(tmp, path)
    except Exception as exc:
        raise HarnessError(
            f"ONNX export of {model.name} failed: {_summary(exc)}",
            "run with HYDRA_FULL_ERROR=1 for the traceback",
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)
