"""The offline tokenizer for decoder models: byte-level BPE trained on the embedded corpus.

Byte-level BPE (GPT-2's scheme, trained with ``tokenizers``) because it is what decoder
LLMs ship, it never produces an unknown token, and OpenVINO's tokenizer converter and
GGUF converters understand it. It is trained once on the train split of the default
corpus and cached in the artifact cache under a key of the corpus fingerprint, the
vocabulary size and the ``tokenizers`` version, so every run (and every model) gets
the same ids. A model folder with its own ``tokenizer.json`` uses that instead
(:func:`harness.models.load_model`).
"""

from __future__ import annotations

import os
from typing import Any, Optional

from harness import cache
from harness.generation.corpus import END_OF_TEXT, build_corpus

#: Upper bound of merges; training stops earlier once the corpus has no more pairs to merge.
VOCAB_SIZE = 2048
#: Documents the tokenizer is trained on (the default corpus's train split, seed 0).
TRAIN_DOCUMENTS = 4000


def corpus_tokenizer(cache_root: Optional[str] = None, vocab_size: int = VOCAB_SIZE) -> Any:
    """The embedded byte-level BPE as a ``PreTrainedTokenizerFast`` (trained once, cached)."""
    import tokenizers
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    corpus = build_corpus(TRAIN_DOCUMENTS, 1, seed=0)
    key = cache.content_key("bpe-tokenizer/1", corpus.fingerprint(), vocab_size, tokenizers.__version__)
    folder = cache.entry("tokenizers", key, cache_root)
    path = folder / "tokenizer.json"
    if path.is_file():
        core = Tokenizer.from_file(str(path))
    else:
        core = _train(corpus.train, vocab_size)
        tmp = folder / f".tmp-{os.getpid()}.json"
        core.save(str(tmp))
        os.replace(tmp, path)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, model_max_length=1 << 20, bos_token=END_OF_TEXT, eos_token=END_OF_TEXT, pad_token=END_OF_TEXT, unk_token=END_OF_TEXT
    )


def text_tokenizer(family: str, own: Any, cache_root: Optional[str] = None) -> Any:
    """The tokenizer a model's text is encoded with: ``own`` (a checkpoint folder's) when
    there is one, else the embedded BPE for decoder LLMs, else None (the dataset's
    default: the word-level tokenizer of the sentiment task for BERT)."""
    from harness.generation.decoders import is_decoder

    if own is not None or not is_decoder(family):
        return own
    return corpus_tokenizer(cache_root)


def _train(texts: Any, vocab_size: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[END_OF_TEXT], show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    core.train_from_iterator(texts, trainer)
    return core
