"""Run llama.cpp's own ``convert_hf_to_gguf.py`` on a harness decoder folder.

Usage: ``python -m harness.serving.gguf_convert CONVERTER_DIR MODEL_FOLDER OUTTYPE OUTFILE``.

The converter is the one shipped in the llama-cpp-python source package (its
``vendor/llama.cpp``), unpacked by ``scripts/llm-server/build-llamacpp.sh``, and it
writes with the gguf-py package of its own commit. Two adjustments, both for tokenizers the converter
does not know by name, leave everything else to it:

- the harness's corpus tokenizer is a byte-level BPE with GPT-2's pre-tokenizer regex,
  but the converter recognises BPE pre-tokenizers only by a hash of known models'
  outputs; when the hash is unknown and the tokenizer's pre-tokenizer *is* GPT-2's
  byte-level regex, it is declared ``gpt-2`` (which llama.cpp then applies);
- the Llama converter first tries a SentencePiece ``tokenizer.model``; with none in
  the folder it is told so (``FileNotFoundError``, the converter's own fallback signal)
  instead of needing the ``sentencepiece`` package to find out.

Runs in a subprocess so the converter's imports and memory never stay in the run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _is_gpt2_byte_level(folder: Path) -> bool:
    """Whether ``tokenizer.json`` pre-tokenizes exactly like GPT-2 (byte-level, regex on)."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return False
    pre = json.loads(path.read_text()).get("pre_tokenizer") or {}
    return pre.get("type") == "ByteLevel" and pre.get("use_regex", True)


def _patch(folder: Path) -> None:
    from conversion import base

    recognise = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self, tokenizer):  # type: ignore[no-untyped-def]
        try:
            return recognise(self, tokenizer)
        except NotImplementedError:
            if _is_gpt2_byte_level(folder):
                return "gpt-2"
            raise

    sentencepiece = base.TextModel._set_vocab_sentencepiece

    def set_vocab_sentencepiece(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not (self.dir_model / "tokenizer.model").is_file():
            raise FileNotFoundError(f"File not found: {self.dir_model / 'tokenizer.model'}")
        return sentencepiece(self, *args, **kwargs)

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    base.TextModel._set_vocab_sentencepiece = set_vocab_sentencepiece


def main(argv: list[str]) -> None:
    converter_dir, folder, outtype, outfile = argv
    sys.path.insert(0, converter_dir)
    _patch(Path(folder))
    import convert_hf_to_gguf

    sys.argv = ["convert_hf_to_gguf.py", folder, "--outtype", outtype, "--outfile", outfile]
    convert_hf_to_gguf.main()


if __name__ == "__main__":
    main(sys.argv[1:])
