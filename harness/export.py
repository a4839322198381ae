"""ONNX export as its own stage: dynamic axes, one self-contained file, cached, validated.

The cache key covers the model config, a digest of the weights, the export options
and the versions of the libraries that shape the graph, so the second run with the
same inputs reuses the file and any change rebuilds it. An export is built in a
staging folder, validated against eager PyTorch there, sealed with checksums and only
then renamed into the cache (:mod:`harness.cache`), so a half-written or wrong file
never lands. A cached entry whose checksum fails (truncated, flipped bytes), that
fails ``onnx.checker``, or whose outputs no longer match eager PyTorch is discarded
with one warning line and rebuilt, never trusted. Once an entry passed those checks, a
stamp (:func:`harness.cache.stamp`) spares later runs the re-hash, the checker and the
onnxruntime-vs-eager run (seconds for a 400 MB file) while its files and the
onnxruntime and harness versions stay the same.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from harness.identity import harness_version, package_versions
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
    return package_versions(("torch", "onnx", "onnxscript", "transformers"))


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


def cached_eager_outputs(model: LoadedModel, batch: Mapping[str, np.ndarray], cache_root: str | None = None) -> np.ndarray:
    """:func:`eager_outputs`, kept under ``<cache>/eager/`` by weights, config, the batch's
    bytes and the library versions: the reference a run validates its backend against
    costs an eager forward pass (and, for a deferred model, building it) only once."""
    import hashlib

    inputs = {
        name: [list(batch[name].shape), str(batch[name].dtype), hashlib.sha256(np.ascontiguousarray(batch[name]).tobytes()).hexdigest()]
        for name in model.input_names
    }
    key = cache.content_key("eager-outputs/1", model.weights_digest(), model.config, inputs, _versions())
    path = cache.cache_dir(cache_root) / "eager" / f"{key}.npy"
    if path.is_file():
        try:
            if cache.verified(path):
                return np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            pass
        cache.discard(path, "does not match its checksum")
    out = eager_outputs(model, batch)
    try:
        cache.atomic_write(path, lambda tmp: np.save(tmp, out))
        cache.seal(path)
    except OSError:  # an unwritable cache costs the next run a forward pass, never this run its record
        pass
    return out


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
    return cached_export(
        key,
        cache_root,
        build=lambda path: _export(model, sample, path),
        check=lambda path: _max_diff(eager_outputs(model, sample), onnx_outputs(path, sample, model.input_names)),
        meta={"versions": versions, "options": options},
        label=model.name,
        on_status=on_status,
    )


#: Files every complete ONNX cache entry has (and its checksum manifest lists).
_REQUIRED = ("model.onnx", "meta.json")


def cached_export(
    key: str,
    cache_root: str | os.PathLike[str] | None,
    *,
    build: Callable[[Path], None],
    check: Callable[[Path], float],
    meta: dict[str, Any],
    label: str,
    on_status: Any = None,
) -> ExportResult:
    """The export stage for any graph: reuse ``<cache>/onnx/<key>`` when it is intact
    and still matches eager PyTorch, else build it again in a staging folder.

    ``build(path)`` writes ``model.onnx`` (and any external-data file named after it);
    ``check(path)`` returns the max abs difference from eager PyTorch. An entry is reused
    only when its checksums match (no truncation, no flipped bytes), the graph passes
    ``onnx.checker`` and ``check`` stays within :data:`TOLERANCE`; anything else is
    discarded with one warning line and rebuilt. A fresh export beyond the tolerance is
    refused and nothing is cached.
    """
    final = cache.cache_dir(cache_root) / "onnx" / key
    started = time.perf_counter()
    problem, diff = _cached_problem(final, check)
    if problem is None:
        return _result(final / "model.onnx", key, time.perf_counter() - started, True, diff)
    if final.exists():
        cache.discard(final, problem)
    if on_status:
        on_status(f"exporting {label} to ONNX (cached afterwards under {final})")
    with cache.staging("onnx", key, cache_root) as built:
        build(built / "model.onnx")
        seconds = time.perf_counter() - started
        diff = check(built / "model.onnx")
        if not diff <= TOLERANCE:
            raise HarnessError(
                f"exported ONNX of {label} differs from eager PyTorch by {diff:.3g} (tolerance {TOLERANCE})",
                "report the model config; the export is not trustworthy (nothing was cached)",
            )
        (built / "meta.json").write_text(json.dumps({"key": key, "export_seconds": seconds, **meta}, indent=2))
        cache.publish(built, final, required=_REQUIRED)
    # Checked in full just now (onnxruntime loaded and ran it against eager PyTorch), so
    # the next run may reuse it without doing that again.
    cache.stamp(final, "onnx-reuse", _check_context(), {"max_abs_diff": diff}, wait=True)
    return _result(final / "model.onnx", key, seconds, False, diff)


def _result(path: Path, key: str, seconds: float, cached: bool, diff: float) -> ExportResult:
    """The stage's figures; the size counts every file of the export (external data too)."""
    size = sum(f.stat().st_size for f in path.parent.iterdir() if f.is_file() and f.name.startswith(path.name))
    return ExportResult(path, key, seconds, cached, diff, size)


def _max_diff(reference: np.ndarray, exported: np.ndarray) -> float:
    if reference.shape != exported.shape:
        return float("inf")
    return float(np.max(np.abs(reference - exported)))


def _check_context() -> dict[str, str]:
    """What a reuse check's verdict depends on beyond the entry's own bytes (its stamp's context)."""
    return {**package_versions(["onnxruntime"]), "harness": harness_version(), "tolerance": str(TOLERANCE)}


def _cached_problem(folder: Path, check: Callable[[Path], float]) -> tuple[str | None, float]:
    """(why the cache entry in ``folder`` cannot be reused or None, its max abs diff).

    The full check runs once per entry and stamps it; while the stamp holds, its
    recorded difference is returned without loading the file.
    """
    path = folder / "model.onnx"
    if not path.is_file():
        return "is incomplete", float("inf")
    context = _check_context()
    facts = cache.stamped(folder, "onnx-reuse", context)
    if facts is not None and isinstance(facts.get("max_abs_diff"), float):
        return None, facts["max_abs_diff"]
    if not cache.folder_verified(folder, _REQUIRED):
        return "does not match its checksums (truncated or corrupted)", float("inf")
    if not _is_valid(path):
        return "fails onnx.checker", float("inf")
    try:
        diff = check(path)
    except Exception as exc:  # onnxruntime refusing the file is one more way to be corrupt
        return f"does not load in onnxruntime ({type(exc).__name__})", float("inf")
    if not diff <= TOLERANCE:
        return f"no longer matches eager PyTorch (max abs diff {diff:.3g} > {TOLERANCE})", diff
    cache.stamp(folder, "onnx-reuse", context, {"max_abs_diff": diff})
    return None, diff


def _summary(exc: BaseException) -> str:
    """The informative line of an exporter error (torch wraps the cause in boilerplate)."""
    lines = [line for line in str(exc).splitlines() if line.startswith("<class ")]
    return lines[0] if lines else f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def _export(model: LoadedModel, sample: Mapping[str, np.ndarray], path: Path) -> None:
    """Export to ``path`` (inside a staging folder; the caller publishes it)."""
    import torch

    kwargs = {name: torch.from_numpy(np.ascontiguousarray(sample[name])) for name in model.input_names}
    tmp = cache.temp_sibling(path)
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
