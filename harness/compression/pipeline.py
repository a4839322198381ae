"""The compression stage of the artifact pipeline: recipe + calibration -> cached artifact.

``torch module -> [prune] -> ONNX export (cached) -> [compress, backend-specific] -> session``.
This module is the last arrow before the session. It checks that the backend lists
the recipe (else ``unsupported``, never a silent fp32 run), draws real calibration
samples, and caches what ``Backend.compress`` writes exactly like the export stage:
under a key of backend + version + recipe + calibration fingerprint + source
artifact key, so a second run reuses the file and any change rebuilds it.

Torch-module artifacts (PyTorch dynamic int8) live in memory and quantize in seconds;
they are rebuilt every run rather than pickled into the cache.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from harness import cache
from harness.backend import Artifact, Backend
from harness.compression.calibration import Calibration, fingerprint, sample_batches
from harness.compression.recipes import Recipe, WeightRecipe
from harness.errors import Unsupported

#: Bump when the layout of a cache entry or the way a recipe is realised changes, so
#: entries made by older code are not reused (library versions are in the key already).
REVISION = 2
_PATH = "$path"


def check_supported(backend: Backend, recipe: Recipe) -> None:
    """Raise :class:`Unsupported` unless ``backend`` lists ``recipe`` (any int8 one for ``auto``)."""
    listed = backend.capabilities().recipes
    ok = any(r.startswith("int8_") for r in listed) if recipe.name == "int8_auto" else recipe.name in listed
    if not ok:
        offered = ", ".join(sorted(listed)) or "none"
        raise Unsupported(
            f"backend '{backend.name}' has no compression recipe '{recipe.name}' (it offers: {offered})",
            "pick one of its recipes with scenario.quantization.mode, or another backend",
        )


def files_size(folder: Path) -> int:
    """Bytes on disk of a compressed artifact's files (its cache folder minus meta.json and
    the checksum manifest and its verification stamps)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name not in ("meta.json", cache.MANIFEST) and not cache.is_stamp(p))


def _encode(value: Any, root: Path) -> Any:
    if isinstance(value, Path):
        return {_PATH: os.path.relpath(value, root)}
    if isinstance(value, dict):
        return {k: _encode(v, root) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v, root) for v in value]
    return value


def _decode(value: Any, root: Path) -> Any:
    if isinstance(value, dict):
        if set(value) == {_PATH}:
            return root / value[_PATH]
        return {k: _decode(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, root) for v in value]
    return value


def _own_meta(compressed: Artifact, source: Artifact) -> dict[str, Any]:
    """The meta keys ``compress`` added or changed: the rest (shapes) belongs to this run."""
    return {k: v for k, v in compressed.meta.items() if k not in source.meta or source.meta[k] != v}


def _restore(stored: Mapping[str, Any], source: Artifact, folder: Path) -> Artifact:
    onnx = stored.get("onnx_path")
    return Artifact(
        source.name,
        source.input_names,
        source.output_names,
        onnx_path=folder / onnx if onnx else None,
        meta={**source.meta, **_decode(stored.get("meta", {}), folder)},
    )


def compress(
    backend: Backend,
    artifact: Artifact,
    recipe: Recipe,
    data: Any,
    source_key: str,
    cache_root: str | None = None,
    status: Callable[[str], None] = print,
    batch_size: int = 8,
) -> tuple[Artifact, dict[str, Any]]:
    """Realise ``recipe`` on ``artifact`` with ``backend``; return the artifact and stage metrics.

    ``data`` is the run's :class:`harness.data.TaskData` (calibration comes from its
    train split); ``source_key`` identifies the source artifact (the export key, or the
    weights digest for torch artifacts).
    """
    check_supported(backend, recipe)
    batches = sample_batches(data, recipe.calibration_samples, batch_size) if recipe.calibrated else []
    samples = sum(len(next(iter(b.values()))) for b in batches)
    calib_fp = fingerprint(batches)
    key = cache.content_key("compressed", REVISION, backend.name, backend.version(), recipe.key(), calib_fp, source_key)

    if artifact.module is not None and artifact.onnx_path is None:
        with tempfile.TemporaryDirectory(prefix="harness-compress-") as tmp:
            calibration = Calibration(batches, samples, calib_fp, Path(tmp))
            status(f"compressing with {recipe.name} on {backend.name} (torch module, not cached)")
            started = time.perf_counter()
            out = backend.compress(artifact, recipe, calibration)
            seconds = time.perf_counter() - started
        return out, _metrics(out, recipe, calibration, seconds, cached=False, key=None, size=out.meta.get("size_bytes"))

    def build(work: Path) -> dict[str, Any]:
        calibration = Calibration(batches, samples, calib_fp, work)
        out = backend.compress(artifact, recipe, calibration)
        return {
            "recipe": recipe.describe(),
            "calibration": calibration.describe(),
            "artifact": {
                "onnx_path": os.path.relpath(out.onnx_path, work) if out.onnx_path else None,
                "meta": _encode(_own_meta(out, artifact), work),
            },
        }

    message = f"compressing with {recipe.name} on {backend.name}" + (f" ({samples} calibration samples)" if samples else "")
    folder, stored, cached = cached_build(key, cache_root, build, message, status, required=("artifact",))
    out = _restore(stored["artifact"], artifact, folder)
    calibration = Calibration(batches, samples, calib_fp, folder)
    return out, _metrics(out, recipe, calibration, stored["seconds"], cached=cached, key=key, size=files_size(folder))


def compress_decoder(
    backend: Backend,
    recipe: WeightRecipe,
    source_key: str,
    tools: dict[str, str],
    build: Callable[[Path], dict[str, Any]],
    cache_root: str | None = None,
    status: Callable[[str], None] = print,
) -> tuple[Path, dict[str, Any]]:
    """A decoder's weight-only compressed artifact, cached like every compressed artifact.

    ``build(workdir)`` is the backend's realisation (an ORT MatMulNBits graph, an
    NNCF-compressed OpenVINO IR...): it writes the files into ``workdir`` and returns the
    realised recipe's details. The key covers the backend, ``tools`` (the library
    versions that shape the result), the recipe and ``source_key`` (the fp32 artifact's
    own key). Returns the entry folder and ``metrics.compression`` (requested and
    realised recipe, seconds, cached, key, size on disk).
    """
    key = cache.content_key("compressed-decoder", REVISION, backend.name, backend.version(), tools, recipe.key(), source_key)
    folder, stored, cached = cached_build(
        key, cache_root, lambda work: {"recipe": build(work)}, f"compressing the weights with {recipe.name} on {backend.name}", status, required=("recipe",)
    )
    return folder, decoder_stage(recipe, stored["recipe"], stored["seconds"], cached, key, files_size(folder))


def decoder_stage(recipe: WeightRecipe, realised: dict[str, Any], seconds: float, cached: bool, key: str | None, size_bytes: int) -> dict[str, Any]:
    """``metrics.compression`` of a weight-only decoder (also for torch modules, which are
    compressed in memory in seconds and, like every torch artifact, not cached)."""
    return {
        "requested": recipe.describe(),
        "recipe": realised,
        "calibration": None,
        "seconds": round(seconds, 3),
        "cached": cached,
        "key": key,
        "size_bytes": size_bytes,
    }


def cached_build(
    key: str, cache_root: str | None, build: Callable[[Path], dict[str, Any]], message: str, status: Callable[[str], None], required: tuple[str, ...] = ()
) -> tuple[Path, dict[str, Any], bool]:
    """The entry ``<cache>/compressed/<key>``: ``(folder, its meta.json, was cached)``.

    An intact entry (checksums match, meta parses with ``seconds`` and every ``required``
    key) is reused; otherwise ``build(workdir)`` writes the compressed files into a
    staging folder and returns what ``meta.json`` stores beside ``key`` and ``seconds``,
    and the folder is sealed with checksums and renamed into place. Every compressed
    artifact (the inference recipes' and the decoders' weight-only ones) is cached here.
    """
    final = cache.cache_dir(cache_root) / "compressed" / key
    stored, problem = _cached_entry(final, required)
    if stored is not None:
        return final, stored, True
    if final.exists():
        cache.discard(final, problem)
    with cache.staging("compressed", key, cache_root) as work:
        status(f"{message} (cached afterwards under {final})")
        started = time.perf_counter()
        stored = {"key": key, **build(work)}
        stored["seconds"] = time.perf_counter() - started
        (work / "meta.json").write_text(json.dumps(stored, indent=2, default=str))
        cache.publish(work, final, required=("meta.json",))
    return final, stored, False


def _cached_entry(folder: Path, required: tuple[str, ...] = ()) -> tuple[dict[str, Any] | None, str]:
    """(the stored meta of a reusable entry, "") or (None, why ``folder`` is not one).

    Reusable means complete and intact: its checksum manifest lists ``meta.json`` and
    every file matches (a truncated model or flipped bytes fail), and the meta parses.
    """
    if not (folder / "meta.json").is_file():
        return None, "is incomplete"
    if not cache.folder_verified(folder, ("meta.json",)):
        return None, "does not match its checksums (truncated or corrupted)"
    try:
        stored = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        stored = None
    if not isinstance(stored, dict) or not {"seconds", *required} <= stored.keys():
        return None, "has an unreadable meta.json"
    return stored, ""


def _metrics(out: Artifact, recipe: Recipe, calibration: Calibration, seconds: float, cached: bool, key: str | None, size: int | None) -> dict[str, Any]:
    """``metrics.compression`` of the record: the requested and the realised recipe."""
    realised = out.meta.get("recipe", {"name": recipe.name})
    used = realised.get("calibrated", bool(calibration.samples))
    return {
        "requested": recipe.describe(),
        "recipe": realised,
        "calibration": calibration.describe() if used and calibration.samples else None,
        "seconds": round(seconds, 3),
        "cached": cached,
        "key": key,
        "size_bytes": size,
    }


def artifact_size(artifact: Artifact) -> int | None:
    """Bytes on disk of what the session runs: the ONNX file, the OpenVINO IR (xml + bin),
    or, for torch modules, the serialized state dict (what ``torch.save`` would write)."""
    ir = artifact.meta.get("openvino_ir")
    if ir:
        xml = Path(ir)
        return sum(p.stat().st_size for p in (xml, xml.with_suffix(".bin")) if p.is_file())
    if artifact.onnx_path is not None:
        return Path(artifact.onnx_path).stat().st_size
    if "size_bytes" in artifact.meta:
        return int(artifact.meta["size_bytes"])
    if artifact.module is not None:
        from harness.compression.torch_quant import state_size_bytes

        return state_size_bytes(artifact.module)
    return None
