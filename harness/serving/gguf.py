"""GGUF files for llama.cpp from a harness decoder folder, cached by content.

Where llama.cpp's tools live (:func:`llamacpp_home`): ``scripts/llm-server/build-llamacpp.sh``
(run by ``make venv``) unpacks the llama-cpp-python source package's ``vendor/llama.cpp``
(the converter ``convert_hf_to_gguf.py``, its ``conversion`` package and the ``gguf-py``
writer of the same commit: the ``gguf`` 0.19.0 on PyPI lags the converter and lacks
what it writes with, so the converter uses its own; the PyPI package reads GGUF files
in the tests) and builds
``llama-server`` and ``llama-bench`` from the same sources into
``$HARNESS_LLAMACPP_HOME`` (default ``~/.cache/harness-llamacpp/<version>``), so the
converter, the server and the in-process bindings are one llama.cpp version.

Conversion (:func:`gguf_for`): the folder (config, safetensors, tokenizer) goes through
llama.cpp's converter to f32 / f16 / bf16; ``q8_0`` and ``q4_K_M`` are quantized from the
f16 file with llama-cpp-python's ``llama_model_quantize`` (llama.cpp's own quantizer).
Every file is cached under ``<cache>/gguf/<key>/model.gguf``, the key covering the
folder's files, the type and the llama.cpp version; a file is written to a temp name
and renamed, so a cache never holds half a GGUF.

``python -m harness.serving.gguf --model llama_tiny --precision fp16`` prints the path of
the GGUF of a harness model (the start script serves it).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

from harness import cache
from harness.errors import HarnessError, Unavailable, Unsupported

#: The llama-cpp-python release whose vendored llama.cpp the tools are built from.
LLAMACPP_VERSION = "0.3.36"
#: harness precision -> GGUF type (converter outtype, or a llama.cpp quantization).
GGUF_TYPES = {"fp32": "f32", "fp16": "f16", "bf16": "bf16", "int8": "q8_0", "int4": "q4_K_M"}
CONVERTED = ("f32", "f16", "bf16")
QUANT_FTYPES = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}
BUILD_FIX = "run scripts/llm-server/build-llamacpp.sh (make venv does) to unpack and build llama.cpp's tools"


def llamacpp_home() -> Path:
    """``$HARNESS_LLAMACPP_HOME``, else ``~/.cache/harness-llamacpp/<version>`` (``$XDG_CACHE_HOME`` honoured)."""
    if os.environ.get("HARNESS_LLAMACPP_HOME"):
        return Path(os.environ["HARNESS_LLAMACPP_HOME"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "harness-llamacpp" / LLAMACPP_VERSION


def converter_dir() -> Path:
    """The folder holding llama.cpp's ``convert_hf_to_gguf.py`` (raises :class:`Unavailable`)."""
    folder = llamacpp_home() / "src"
    if not (folder / "convert_hf_to_gguf.py").is_file():
        raise Unavailable(f"llama.cpp's GGUF converter is not unpacked under {folder}", BUILD_FIX)
    return folder


def tool(name: str) -> Optional[Path]:
    """A llama.cpp binary built by the build script (``llama-server``, ``llama-bench``), or None."""
    path = llamacpp_home() / "bin" / name
    return path if path.is_file() and os.access(path, os.X_OK) else None


def folder_digest(folder: Path) -> str:
    """sha256 over the files that define the model (config, weights, tokenizer)."""
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix in (".json", ".safetensors", ".model", ".txt") and not cache.is_stamp(path):
            digest.update(path.name.encode())
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def gguf_type(precision: str) -> str:
    if precision not in GGUF_TYPES:
        raise Unsupported(
            f"llama.cpp has no GGUF type for precision '{precision}'",
            f"use one of {', '.join(GGUF_TYPES)} ({', '.join(f'{k}={v}' for k, v in GGUF_TYPES.items())})",
        )
    return GGUF_TYPES[precision]


def gguf_for(folder: Path, precision: str, cache_root: Optional[str] = None, status: Callable[[str], None] = print) -> tuple[Path, dict[str, Any]]:
    """The cached GGUF of ``folder`` at ``precision``, and the stage's figures for the record."""
    kind = gguf_type(precision)
    digest = folder_digest(Path(folder))
    started = time.perf_counter()
    path, was_cached = _cached(Path(folder), digest, kind, cache_root, status)
    return path, {
        "gguf_type": kind,
        "path": str(path),
        "size_bytes": path.stat().st_size,
        "cached": was_cached,
        "seconds": time.perf_counter() - started,
        "llama_cpp_python": LLAMACPP_VERSION,
    }


def _cached(folder: Path, digest: str, kind: str, cache_root: Optional[str], status: Callable[[str], None]) -> tuple[Path, bool]:
    final = cache.entry("gguf", cache.content_key("gguf/1", digest, kind, LLAMACPP_VERSION), cache_root) / "model.gguf"
    if final.is_file():
        return final, True
    tmp = final.with_name(f".tmp-{os.getpid()}-model.gguf")
    try:
        if kind in CONVERTED:
            status(f"converting {folder.name} to GGUF {kind} with llama.cpp's convert_hf_to_gguf.py")
            _convert(folder, kind, tmp)
        else:
            base, _ = _cached(folder, digest, "f16", cache_root, status)
            status(f"quantizing the f16 GGUF to {kind} with llama.cpp (llama_model_quantize)")
            _quantize(base, tmp, kind)
        tmp.replace(final)
    finally:
        tmp.unlink(missing_ok=True)
    return final, False


def _convert(folder: Path, outtype: str, out: Path) -> None:
    command = [sys.executable, "-m", "harness.serving.gguf_convert", str(converter_dir()), str(folder), outtype, str(out)]
    env = {k: v for k, v in os.environ.items() if k != "NO_LOCAL_GGUF"}  # the converter's own gguf-py (see module doc)
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600, env=env)
    if done.returncode != 0 or not out.is_file():
        last = next((ln for ln in reversed(done.stderr.strip().splitlines()) if ln.strip()), "no output")
        raise HarnessError(
            f"llama.cpp's converter failed on {folder}: {' '.join(last.split())[:300]}",
            "the folder must be a Hugging Face causal LM llama.cpp supports (config.json, safetensors, tokenizer)",
        )


def _quantize(source: Path, out: Path, kind: str) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_FTYPES[kind])
    params.nthread = os.cpu_count() or 1
    code = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), params)
    if code != 0 or not out.is_file():
        raise HarnessError(
            f"llama.cpp could not quantize {source.name} to {kind} (code {code})", "check that the model's tensor shapes suit this quantization type"
        )


def main(argv: Optional[list[str]] = None) -> None:
    """Print the GGUF path of a harness model (``--model``) or folder (``--folder``)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m harness.serving.gguf", description=main.__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--model", help="a harness model config name (conf/model/NAME.yaml), random init")
    group.add_argument("--folder", help="a local Hugging Face causal-LM folder")
    parser.add_argument("--precision", default="fp16", choices=sorted(GGUF_TYPES))
    parser.add_argument("--cache-dir", default=None)
    args = parser.parse_args(argv)
    say = lambda text: print(text, file=sys.stderr)  # noqa: E731 - stdout carries only the path
    try:
        folder = Path(args.folder) if args.folder else _model_folder(args.model, args.cache_dir, say)
        path, _ = gguf_for(folder, args.precision, args.cache_dir, say)
    except HarnessError as exc:
        print(f"gguf: error: {exc.one_line()}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    print(path)


def _model_folder(name: str, cache_root: Optional[str], status: Callable[[str], None]) -> Path:
    """The saved folder of harness model ``name`` (random init from its config, cached)."""
    from importlib import resources

    from omegaconf import OmegaConf

    from harness.validation import typed
    from harness.errors import ConfigError
    from harness.generation.session import DecoderSource
    from harness.generation.tokenizer import corpus_tokenizer
    from harness.models import ModelOptions, load_model

    config = resources.files("harness.conf").joinpath("model", f"{name}.yaml")
    if not config.is_file():
        raise ConfigError(f"no model config '{name}'", "pick one of conf/model/*.yaml, e.g. llama_tiny")
    options = typed(ModelOptions, OmegaConf.create(config.read_text()), "model")
    status(f"building {name}")
    model = load_model(options)
    tokenizer = model.tokenizer or corpus_tokenizer(cache_root)
    source = DecoderSource(model.name, model.module, model.config, tokenizer, model.params, model.weights_digest(), cache_root, status)
    return source.folder()


if __name__ == "__main__":
    main()
