"""The embedded text corpus: documents about a small, consistent, generated world.

Why generated and why this shape: nothing may be downloaded, and perplexity is only
meaningful on text a model can learn. Every document talks about one fixed world (a
seeded cast of people, each with one home city, job, pet, favourite food and sibling),
so facts repeat consistently across documents and a small decoder can learn them;
sentence templates give syntax with long-range agreement (pronouns follow the person,
answers follow questions); arithmetic and counting lines give exactly predictable
continuations. Eval documents are new combinations of the same facts, so eval
perplexity measures what was learned, not what was memorised verbatim. A uniform
guess over the tokenizer's vocabulary scores its size as perplexity; a model trained
on the train split gets far below it.

Everything is deterministic from ``seed``; ``train_size``/``eval_size`` count documents.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from harness.errors import ConfigError

#: Separates documents in the token stream; the tokenizer's eos/bos/pad token.
END_OF_TEXT = "<|endoftext|>"

_NAMES = (
    ("Alice", "she"),
    ("Bruno", "he"),
    ("Chloe", "she"),
    ("Daniel", "he"),
    ("Elena", "she"),
    ("Felix", "he"),
    ("Greta", "she"),
    ("Hugo", "he"),
    ("Irene", "she"),
    ("Jonas", "he"),
    ("Karin", "she"),
    ("Leon", "he"),
    ("Maya", "she"),
    ("Nico", "he"),
    ("Olga", "she"),
    ("Pavel", "he"),
    ("Quinn", "she"),
    ("Rafael", "he"),
    ("Sofia", "she"),
    ("Tomas", "he"),
    ("Ursula", "she"),
    ("Victor", "he"),
    ("Wanda", "she"),
    ("Xavier", "he"),
    ("Yara", "she"),
    ("Zeno", "he"),
    ("Agnes", "she"),
    ("Boris", "he"),
    ("Clara", "she"),
    ("Dmitri", "he"),
    ("Edith", "she"),
    ("Frank", "he"),
)
_CITIES = (
    "paris",
    "lisbon",
    "oslo",
    "vienna",
    "madrid",
    "prague",
    "dublin",
    "berlin",
    "rome",
    "athens",
    "warsaw",
    "zurich",
    "helsinki",
    "lyon",
    "porto",
    "munich",
)
_JOBS = (
    "baker",
    "teacher",
    "doctor",
    "pilot",
    "farmer",
    "painter",
    "nurse",
    "engineer",
    "lawyer",
    "chef",
    "writer",
    "driver",
    "singer",
    "gardener",
    "carpenter",
    "banker",
)
_ANIMALS = ("cat", "dog", "horse", "parrot", "rabbit", "goat", "turtle", "hamster", "duck", "pony")
_COLORS = ("red", "blue", "green", "black", "white", "brown", "grey", "yellow")
_FOODS = ("bread", "soup", "rice", "apples", "cheese", "fish", "pasta", "cake", "beans", "plums", "eggs", "salad")
_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_NUMBERS = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
)
#: Document kinds and how often each is drawn.
_KINDS = (("story", 0.55), ("questions", 0.25), ("arithmetic", 0.12), ("counting", 0.08))


@dataclass(frozen=True)
class Person:
    name: str
    pronoun: str
    city: str
    job: str
    pet: tuple[str, str]  # colour, animal
    food: str
    sibling: str


def world(seed: int = 0) -> tuple[Person, ...]:
    """The cast: every fact fixed by ``seed`` (the same world for train and eval)."""
    rng = np.random.default_rng(10_000 + seed)
    people = []
    for index, (name, pronoun) in enumerate(_NAMES):
        sibling = _NAMES[(index + 1 + int(rng.integers(len(_NAMES) - 1))) % len(_NAMES)][0]
        people.append(Person(name, pronoun, _pick(rng, _CITIES), _pick(rng, _JOBS), (_pick(rng, _COLORS), _pick(rng, _ANIMALS)), _pick(rng, _FOODS), sibling))
    return tuple(people)


def _pick(rng: np.random.Generator, words: Sequence[str]) -> str:
    return words[int(rng.integers(len(words)))]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _story(rng: np.random.Generator, cast: tuple[Person, ...]) -> str:
    p = cast[int(rng.integers(len(cast)))]
    color, animal = p.pet
    facts = [
        f"{p.name} lives in {p.city} .",
        f"{p.pronoun} works as {_article(p.job)} {p.job} in {p.city} .",
        f"{p.pronoun} has {_article(color)} {color} {animal} .",
        f"every {_pick(rng, _DAYS)} {p.name} eats {p.food} with {p.sibling} .",
        f"{p.sibling} is the sibling of {p.name} .",
        f"the {animal} of {p.name} is {color} .",
        f"when {p.name} is hungry , {p.pronoun} eats {p.food} .",
    ]
    order = rng.permutation(len(facts))[: int(rng.integers(3, len(facts) + 1))]
    sentences = [facts[i] for i in order]
    sentences[0] = sentences[0].replace(f"{p.pronoun} ", f"{p.name} ", 1) if sentences[0].startswith(p.pronoun) else sentences[0]
    return " ".join(sentences)


def _questions(rng: np.random.Generator, cast: tuple[Person, ...]) -> str:
    lines = []
    for _ in range(int(rng.integers(2, 5))):
        p = cast[int(rng.integers(len(cast)))]
        question, answer = [
            (f"where does {p.name} live ?", f"{p.name} lives in {p.city} ."),
            (f"what does {p.name} do ?", f"{p.name} is {_article(p.job)} {p.job} ."),
            (f"what pet does {p.name} have ?", f"{p.name} has {_article(p.pet[0])} {p.pet[0]} {p.pet[1]} ."),
            (f"what does {p.name} eat ?", f"{p.name} eats {p.food} ."),
            (f"who is the sibling of {p.name} ?", f"the sibling of {p.name} is {p.sibling} ."),
        ][int(rng.integers(5))]
        lines.append(f"question : {question} answer : {answer}")
    return " ".join(lines)


def _arithmetic(rng: np.random.Generator, cast: tuple[Person, ...]) -> str:
    lines = []
    for _ in range(int(rng.integers(3, 7))):
        a = int(rng.integers(0, 11))
        b = int(rng.integers(0, 21 - a))
        if rng.random() < 0.5:
            lines.append(f"{_NUMBERS[a]} plus {_NUMBERS[b]} is {_NUMBERS[a + b]} .")
        else:
            lines.append(f"{_NUMBERS[a + b]} minus {_NUMBERS[b]} is {_NUMBERS[a]} .")
    return " ".join(lines)


def _counting(rng: np.random.Generator, cast: tuple[Person, ...]) -> str:
    start = int(rng.integers(0, 10))
    stop = int(rng.integers(start + 5, len(_NUMBERS) + 1))
    return "counting : " + " ".join(_NUMBERS[start:stop]) + " ."


_WRITERS = {"story": _story, "questions": _questions, "arithmetic": _arithmetic, "counting": _counting}


def documents(count: int, seed: int, stream: int) -> list[str]:
    """``count`` documents of random stream ``stream`` (0 = train, 1 = eval) of world ``seed``."""
    cast = world(seed)
    rng = np.random.default_rng([seed, stream])
    kinds = [kind for kind, _ in _KINDS]
    weights = np.array([weight for _, weight in _KINDS])
    drawn = rng.choice(len(kinds), size=count, p=weights / weights.sum())
    return [_WRITERS[kinds[k]](rng, cast) for k in drawn]


@dataclass(frozen=True)
class Corpus:
    """Train and eval documents (eval never repeats a train document verbatim)."""

    train: tuple[str, ...]
    eval: tuple[str, ...]
    seed: int

    def fingerprint(self) -> str:
        """sha256 prefix over both splits: a cache key part for anything derived from the text."""
        digest = hashlib.sha256(f"corpus/1|{self.seed}".encode())
        for split in (self.train, self.eval):
            digest.update(f"|{len(split)}|".encode())
            for text in split:
                digest.update(text.encode())
                digest.update(b"\x00")
        return digest.hexdigest()[:20]


def build_corpus(train_size: int, eval_size: int, seed: int = 0) -> Corpus:
    """The corpus with ``train_size`` train and ``eval_size`` eval documents."""
    if train_size < 1 or eval_size < 1:
        raise ConfigError(
            f"the corpus needs at least one train and one eval document (got {train_size}, {eval_size})", "set dataset.train_size and dataset.eval_size >= 1"
        )
    train = documents(train_size, seed, 0)
    seen = set(train)
    pool = documents(eval_size * 4, seed, 1)
    eval_ = [text for text in dict.fromkeys(pool) if text not in seen][:eval_size]
    if len(eval_) < eval_size:
        raise ConfigError(f"the corpus generator found only {len(eval_)} eval documents unseen in train", "lower dataset.eval_size")
    return Corpus(tuple(train), tuple(eval_), seed)


def load_corpus(options: Any) -> Corpus:
    """The corpus a ``dataset`` config (``kind: corpus``) describes."""
    if getattr(options, "kind", None) != "corpus":
        raise ConfigError(
            f"dataset '{options.name}' (kind {options.kind}) is not a text corpus", "use dataset=corpus for generation and language-model scenarios"
        )
    return build_corpus(options.train_size, options.eval_size, options.seed)


def token_stream(tokenizer: Any, texts: Sequence[str]) -> np.ndarray:
    """Every document's token ids, each followed by the end-of-text id, as one int64 array."""
    eos = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    if eos is None or eos == tokenizer.unk_token_id:
        eos = tokenizer.eos_token_id
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    ids: list[int] = []
    for piece in encoded:
        ids.extend(piece)
        if eos is not None:
            ids.append(eos)
    return np.asarray(ids, dtype=np.int64)


def windows(stream: np.ndarray, length: int, count: int) -> np.ndarray:
    """``count`` non-overlapping windows of ``length`` tokens from the start of ``stream``.

    Fewer when the stream is short: the caller cycles or reports the count it got.
    """
    if length < 1:
        raise ValueError(f"window length must be >= 1, got {length}")
    available = len(stream) // length
    if available < 1:
        raise ConfigError(
            f"the eval text has {len(stream)} tokens, fewer than one window of {length}", "raise dataset.eval_size or lower the prompt / window length"
        )
    n = min(count, available)
    return stream[: n * length].reshape(n, length)
