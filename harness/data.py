"""Datasets and tasks: what a model is fed, for speed runs and for accuracy.

Three kinds, all offline and deterministic from ``seed``:

- ``sentiment``: generated review sentences. Negators ("not", "never", "hardly") flip
  the sentiment word they scope over, and in "A but B" the clause after "but" decides,
  so a bag of words cannot solve it while a small transformer learns it in minutes.
  That gap is what makes accuracy under compression meaningful.
- ``digits``: scikit-learn's bundled 8x8 digits, upsampled to ``image_size``.
- ``files``: the user's CSV/TSV/JSONL/Parquet files or a ``datasets`` save_to_disk folder.

Everything ends as numpy arrays in a :class:`TaskData`, so backends and scenarios
never see pandas, tokenizers or torch.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence

import numpy as np

from harness.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd
    from transformers import PreTrainedTokenizerFast

KINDS = ("sentiment", "digits", "files", "corpus")  # corpus: text for decoder LLMs (harness.generation.corpus)
FORMATS = ("csv", "tsv", "jsonl", "parquet", "hf_disk")
_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
_HF_MARKERS = ("dataset_dict.json", "dataset_info.json")
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# The sentiment grammar. Every word here is in the embedded tokenizer's vocabulary.
_DETERMINERS = ("the", "this", "that")
_SUBJECTS = (
    "movie",
    "film",
    "plot",
    "acting",
    "script",
    "ending",
    "cast",
    "soundtrack",
    "story",
    "dialogue",
    "pacing",
    "director",
    "music",
    "humor",
    "sequel",
    "show",
)
_VERBS = ("was", "is", "seemed", "felt", "looked")
_POSITIVE = (
    "good",
    "great",
    "excellent",
    "wonderful",
    "brilliant",
    "superb",
    "delightful",
    "charming",
    "enjoyable",
    "fantastic",
    "clever",
    "beautiful",
    "solid",
    "fun",
)
_NEGATIVE = ("bad", "terrible", "awful", "boring", "dull", "poor", "weak", "horrible", "dreadful", "tedious", "messy", "bland", "clumsy", "annoying")
_NEGATORS = ("not", "never", "hardly")
_INTENSIFIERS = ("very", "really", "extremely", "quite", "truly")
_PREFIXES = ("honestly ,", "overall ,", "frankly ,", "in my opinion ,", "to be fair ,", "i think")
_SUFFIXES_TEXT = ("at times", "in the end", "for me", "to be honest", "from start to finish")
_P_BUT, _P_AND, _P_NEGATE, _P_INTENSIFY, _P_PREFIX, _P_SUFFIX = 0.3, 0.15, 0.35, 0.3, 0.3, 0.3


@dataclass
class DatasetOptions:
    """The ``dataset`` config node (an OmegaConf structured config)."""

    name: str = "sentiment"
    kind: str = "sentiment"
    path: Optional[str] = None
    format: Optional[str] = None
    text_column: str = "text"
    label_column: str = "label"
    image_column: str = "image"
    train_split: str = "train"
    eval_split: str = "test"
    train_size: int = 4000  # sentiment: examples generated; digits/files: cap, 0 = all
    eval_size: int = 1000
    image_size: int = 32
    seed: int = 0
    remap_labels: bool = False  # files: map the sorted distinct label values to 0..K-1 (e.g. -1/1 -> 0/1)

    def __post_init__(self) -> None:
        def bad(key: str, why: str, fix: str) -> ValueError:
            return ValueError(f"dataset.{key}={getattr(self, key)!r}: {why}; fix: {fix}")

        if self.kind not in KINDS:
            raise bad("kind", "unknown dataset kind", f"use one of {', '.join(KINDS)}")
        if self.format is not None and self.format not in FORMATS:
            raise bad("format", "unknown format", f"use one of {', '.join(FORMATS)} or leave it unset")
        if self.kind == "files" and not self.path:
            raise bad("path", "kind=files needs a path", "set dataset.path to a file or folder")
        minimum = 1 if self.kind in ("sentiment", "corpus") else 0
        for key in ("train_size", "eval_size"):
            if getattr(self, key) < minimum:
                raise bad(key, f"must be >= {minimum} for kind={self.kind}", "use a positive size")
        if self.image_size < 1:
            raise bad("image_size", "must be positive", "use e.g. 32")
        if self.seed < 0:
            raise bad("seed", "must be >= 0", "use a non-negative integer")


@dataclass
class Split:
    """One split as arrays: model inputs by name, int64 labels, and raw texts for text tasks."""

    features: dict[str, np.ndarray]
    labels: np.ndarray
    texts: Optional[list[str]] = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class TaskData:
    """A task with both splits, ready to batch. ``tokenizer`` is None for image tasks.

    ``unknown_share``: for text from the user's files, the share of word tokens the
    tokenizer could only map to ``[UNK]`` (None for generated and image data).
    """

    task: str
    num_labels: int
    label_names: list[str]
    tokenizer: Any
    seq_len: Optional[int]
    train: Split
    eval: Split
    unknown_share: Optional[float] = None

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(self.train.features)

    def _split(self, split: str) -> Split:
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', not {split!r}")
        return getattr(self, split)

    def batches(
        self, split: str = "eval", batch_size: int = 8, *, shuffle: bool = False, seed: int = 0, drop_last: bool = False, limit: Optional[int] = None
    ) -> Iterator[dict[str, np.ndarray]]:
        """Batches of features plus ``labels``; ``limit`` caps the number of examples used."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {batch_size}")
        data = self._split(split)
        order = np.random.default_rng(seed).permutation(len(data)) if shuffle else np.arange(len(data))
        order = order[:limit] if limit is not None else order
        stop = len(order) - len(order) % batch_size if drop_last else len(order)
        for start in range(0, stop, batch_size):
            index = order[start : start + batch_size]
            yield {**{k: v[index] for k, v in data.features.items()}, "labels": data.labels[index]}

    def sample_batch(self, batch_size: int, split: str = "eval") -> dict[str, np.ndarray]:
        """The first ``batch_size`` examples' features, cycling when the split is smaller.

        Speed runs need any batch size, even larger than a small eval split.
        """
        data = self._split(split)
        index = np.arange(batch_size) % len(data)
        return {k: v[index] for k, v in data.features.items()}

    def fingerprint(self) -> str:
        """A sha256 prefix over both splits' arrays: changes whenever the data does."""
        digest = hashlib.sha256(f"{self.task}|{self.num_labels}|{self.label_names}".encode())
        for split in (self.train, self.eval):
            for name, array in [*sorted(split.features.items()), ("labels", split.labels)]:
                array = np.ascontiguousarray(array)
                digest.update(f"{name}|{array.dtype.str}|{array.shape}".encode())
                digest.update(array.tobytes())
        return digest.hexdigest()[:20]


def load_dataset(options: DatasetOptions, *, seq_len: int = 128, tokenizer: Any = None) -> TaskData:
    """Build the task ``options`` describes; text is tokenized to exactly ``seq_len`` tokens.

    ``tokenizer`` (e.g. a local checkpoint's own) replaces the embedded one for text tasks.
    """
    if seq_len < 2:
        raise ConfigError(f"seq_len={seq_len} cannot hold [CLS] and [SEP]", "use seq_len >= 2")
    if tokenizer is not None or options.kind not in _GENERATED:
        return _LOADERS[options.kind](options, seq_len, tokenizer)
    key = repr((options, seq_len))
    if key not in _BUILT:
        _BUILT[key] = _LOADERS[options.kind](options, seq_len, None)
        while len(_BUILT) > 4:
            _BUILT.popitem(last=False)
    return _BUILT[key]


#: Kinds generated from their options alone (no files): the same options give the same data.
_GENERATED = ("sentiment", "digits", "corpus")
#: Generated datasets built in this process, by options and sequence length: a worker that
#: runs a sweep's jobs (``launcher.reuse_worker``) builds each one once. Nothing changes a
#: built dataset's arrays in place.
_BUILT: "OrderedDict[str, TaskData]" = OrderedDict()


def vocabulary() -> list[str]:
    """Special tokens, then every word the sentiment generator can emit, sorted: stable ids."""
    groups = (_DETERMINERS, _SUBJECTS, _VERBS, _POSITIVE, _NEGATIVE, _NEGATORS, _INTENSIFIERS, _PREFIXES, _SUFFIXES_TEXT, ("but", "and", "."))
    words = {word for group in groups for phrase in group for word in phrase.split()}
    return [*SPECIAL_TOKENS, *sorted(words)]


def _embedded_core() -> Any:
    """The ``tokenizers`` tokenizer behind :func:`embedded_tokenizer`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    vocab = {word: i for i, word in enumerate(vocabulary())}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    return core


def embedded_tokenizer() -> "PreTrainedTokenizerFast":
    """A BERT-style word-level tokenizer over :func:`vocabulary`, built without downloads.

    Wrapped in ``PreTrainedTokenizerFast`` so checkpoints can save and reload it.
    """
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=_embedded_core(), model_max_length=512, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]"
    )


def _embedded_encoder(seq_len: int) -> Any:
    """The embedded tokenizer's ``tokenizers`` core, padding and truncating to ``seq_len``."""
    core = _embedded_core()
    core.enable_truncation(max_length=seq_len)
    core.enable_padding(length=seq_len, pad_id=SPECIAL_TOKENS.index("[PAD]"), pad_token="[PAD]")
    return core


def _encode_embedded(core: Any, texts: list[str], seq_len: int) -> dict[str, np.ndarray]:
    """:func:`_encode` with the embedded tokenizer (``core`` from :func:`_embedded_encoder`),
    through ``tokenizers`` alone: the same ids (tested) without importing transformers
    (about a second of every run's start)."""
    encoded = core.encode_batch(list(texts))
    return {
        "input_ids": np.asarray([e.ids for e in encoded], dtype=np.int64).reshape(len(encoded), seq_len),
        "attention_mask": np.asarray([e.attention_mask for e in encoded], dtype=np.int64).reshape(len(encoded), seq_len),
    }


class DeferredTokenizer:
    """Stands in for the tokenizer a factory makes, built on first use: the data of a
    run is encoded without it, and most runs never touch it again (a training run saves it
    with its checkpoint)."""

    def __init__(self, build: Callable[[], Any]) -> None:
        self._build = build
        self._real: Any = None

    def _tokenizer(self) -> Any:
        if self._real is None:
            self._real = self._build()
        return self._real

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_build", "_real"):
            raise AttributeError(name)
        return getattr(self._tokenizer(), name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._tokenizer()(*args, **kwargs)


# --- sentiment -------------------------------------------------------------------------


def _clause(rng: np.random.Generator, label: int) -> list[str]:
    """ "<det> <subject> <verb> [negator] [intensifier] <adjective>" with sentiment ``label``."""

    def pick(words: tuple[str, ...]) -> str:
        return words[rng.integers(len(words))]

    negated = bool(rng.random() < _P_NEGATE)
    words = [pick(_DETERMINERS), pick(_SUBJECTS), pick(_VERBS)]
    words += [pick(_NEGATORS)] if negated else []
    words += [pick(_INTENSIFIERS)] if rng.random() < _P_INTENSIFY else []
    return words + [pick(_POSITIVE if (label == 1) != negated else _NEGATIVE)]


def _sentence(rng: np.random.Generator, label: int) -> str:
    """One review of at most 22 words; in "A but B" the clause B carries the label."""
    draw = rng.random()
    if draw < _P_BUT:
        words = _clause(rng, 1 - label) + ["but"] + _clause(rng, label)
    elif draw < _P_BUT + _P_AND:
        words = _clause(rng, label) + ["and"] + _clause(rng, label)
    else:
        words = _clause(rng, label)
    if rng.random() < _P_PREFIX:
        words = _PREFIXES[rng.integers(len(_PREFIXES))].split() + words
    if rng.random() < _P_SUFFIX:
        words += _SUFFIXES_TEXT[rng.integers(len(_SUFFIXES_TEXT))].split()
    return " ".join(words + ["."])


def _load_sentiment(options: DatasetOptions, seq_len: int, tokenizer: Any) -> TaskData:
    """Balanced splits of distinct sentences: no eval sentence appears in train."""
    rng = np.random.default_rng(options.seed)
    labels = [rng.permutation(np.arange(n) % 2) for n in (options.train_size, options.eval_size)]
    seen: set[str] = set()
    texts: list[str] = []
    for label in np.concatenate(labels):
        for _ in range(100):
            text = _sentence(rng, int(label))
            if text not in seen:
                break
        else:
            raise ConfigError("the sentiment generator ran out of distinct sentences", "lower dataset.train_size or dataset.eval_size")
        seen.add(text)
        texts.append(text)
    frames = (texts[: options.train_size], texts[options.train_size :])
    return _text_task(frames, labels, ["negative", "positive"], seq_len, tokenizer)


# --- digits ----------------------------------------------------------------------------


def _load_digits(options: DatasetOptions, seq_len: int, tokenizer: Any) -> TaskData:
    """Stratified 75/25 split, standardised with train statistics, resized bilinearly."""
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0
    x_train, x_eval, y_train, y_eval = train_test_split(
        images, digits.target.astype(np.int64), test_size=0.25, random_state=options.seed, stratify=digits.target
    )
    x_train, y_train = _cap(x_train, options.train_size), _cap(y_train, options.train_size)
    x_eval, y_eval = _cap(x_eval, options.eval_size), _cap(y_eval, options.eval_size)
    mean, std = x_train.mean(), x_train.std()

    def pixels(x: np.ndarray) -> np.ndarray:
        tensor = torch.from_numpy((x - mean) / std).unsqueeze(1)
        size = (options.image_size, options.image_size)
        resized = torch.nn.functional.interpolate(tensor, size=size, mode="bilinear", align_corners=False)
        return resized.numpy().astype(np.float32)

    return TaskData(
        "image-classification",
        10,
        [str(i) for i in range(10)],
        None,
        None,
        Split({"pixel_values": pixels(x_train)}, y_train),
        Split({"pixel_values": pixels(x_eval)}, y_eval),
    )


def _cap(array: np.ndarray, size: int) -> np.ndarray:
    return array[:size] if size else array


# --- files -----------------------------------------------------------------------------

_Frames = tuple["pd.DataFrame", "pd.DataFrame", Optional[list[str]]]  # train, eval, label names

#: Share of ``[UNK]`` word tokens in user text above which the run warns.
UNKNOWN_WARN_SHARE = 0.05
_WARNED: set[tuple[str, str]] = set()

#: Classes of the built-in dataset kinds (``files`` reads them from the data).
BUILTIN_LABELS = {"sentiment": 2, "digits": 10}
#: The task each dataset kind poses.
TASKS = {"sentiment": "text-classification", "digits": "image-classification", "files": "text-classification", "corpus": "causal-lm"}


def _load_files(options: DatasetOptions, seq_len: int, tokenizer: Any) -> TaskData:
    """Text classification from local files; labels may be ints or strings."""
    texts, labels, names = _files_texts_and_labels(options)
    data = _text_task(texts, labels, names, seq_len, tokenizer)
    data.unknown_share = unknown_share(data)
    _warn_unknown(options, data)
    return data


def _files_texts_and_labels(options: DatasetOptions) -> tuple[list[list[str]], list[np.ndarray], list[str]]:
    """Texts, encoded labels and label names of both splits of a ``files`` dataset."""
    train, eval_, names = _read_splits(options)
    frames = [_capped(frame, size, options.seed) for frame, size in ((train, options.train_size), (eval_, options.eval_size))]
    texts = [_column(frame, options.text_column, "text").astype(str).tolist() for frame in frames]
    raw = [_column(frame, options.label_column, "label") for frame in frames]
    labels, names = _encode_labels(raw, names, options.remap_labels)
    return texts, labels, names


_LABEL_NAMES: dict[tuple[Any, ...], list[str]] = {}


def label_names(options: DatasetOptions) -> list[str]:
    """The classes a dataset has, as the run will encode them (reads a ``files`` dataset:
    schema, missing values and label encoding are checked on the way). Remembered per
    options and file modification times: a sweep's jobs share one read."""
    if options.kind != "files":
        fixed = {"sentiment": ["negative", "positive"], "digits": [str(i) for i in range(10)]}
        return fixed.get(options.kind, [])  # a text corpus has no classes
    path = Path(options.path or "").expanduser()
    files = sorted(path.iterdir()) if path.is_dir() else [path]
    key = (repr(options), tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files if f.exists()))
    if key not in _LABEL_NAMES:
        _LABEL_NAMES[key] = _files_texts_and_labels(options)[2]
    return _LABEL_NAMES[key]


def check_labels(options: DatasetOptions, num_labels: int, source: str) -> None:
    """Refuse a dataset with more classes than the model's ``num_labels`` (``source`` says
    where that number comes from): scoring it would report a meaningless accuracy."""
    names = label_names(options)
    if len(names) <= num_labels:
        return
    shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
    if options.kind == "files":
        fix = f"model.num_labels={len(names)} (labels must be 0..num_labels-1), or choose data with at most {num_labels} classes"
    else:
        fix = f"model.num_labels={len(names)}, or a dataset with {num_labels} classes"
    raise ConfigError(
        f"dataset '{options.name}' has {len(names)} label values ({shown}) but {source} has num_labels={num_labels}: accuracy would be meaningless", fix
    )


def unknown_share(data: TaskData) -> Optional[float]:
    """Share of real word tokens (not padding, not ``[CLS]``/``[SEP]``) that are ``[UNK]``."""
    unk = getattr(data.tokenizer, "unk_token_id", None)
    if unk is None:
        return None
    special = {i for i in (data.tokenizer.cls_token_id, data.tokenizer.sep_token_id, data.tokenizer.pad_token_id) if i is not None}
    words = unknown = 0
    for split in (data.train, data.eval):
        ids, mask = split.features["input_ids"], split.features["attention_mask"].astype(bool)
        real = mask & ~np.isin(ids, list(special))
        words += int(real.sum())
        unknown += int((real & (ids == unk)).sum())
    return unknown / words if words else None


def _warn_unknown(options: DatasetOptions, data: TaskData) -> None:
    """One warning line per dataset and tokenizer when many words are unknown to it."""
    share = data.unknown_share
    key = (str(options.path), str(getattr(data.tokenizer, "name_or_path", "")))
    if share is None or share <= UNKNOWN_WARN_SHARE or key in _WARNED:
        return
    _WARNED.add(key)
    from harness import ui

    ui.warning(
        f"{share:.0%} of the words in dataset.path {options.path} are [UNK] to the tokenizer, so the model "
        "sees mostly unknown tokens and its accuracy says little (fix: give model.path a checkpoint whose "
        "tokenizer.json covers this text, or train one on it)"
    )


def _read_splits(options: DatasetOptions) -> _Frames:
    """Train and eval frames, plus label names when the source declares them."""
    path = Path(options.path or "").expanduser()
    if not path.exists():
        raise ConfigError(f"dataset.path {path} does not exist", "point dataset.path at a csv/tsv/jsonl/parquet file or a folder")
    is_hf = path.is_dir() and any((path / marker).exists() for marker in _HF_MARKERS)
    if options.format == "hf_disk" or (options.format is None and is_hf):
        return _read_hf_disk(path, options)
    if path.is_file():
        return (*_split_frame(_read_table(path, options.format), options.seed), None)
    frames = [_read_table(_split_file(path, split, options.format), options.format) for split in (options.train_split, options.eval_split)]
    return frames[0], frames[1], None


def _split_file(folder: Path, split: str, fmt: Optional[str]) -> Path:
    """``<folder>/<split>.<ext>`` for the first suffix matching ``fmt`` (any, when unset)."""
    for suffix, suffix_format in _SUFFIXES.items():
        if (fmt is None or fmt == suffix_format) and (folder / f"{split}{suffix}").is_file():
            return folder / f"{split}{suffix}"
    present = ", ".join(sorted(p.name for p in folder.iterdir())) or "nothing"
    raise ConfigError(
        f"no {split}.<csv|tsv|jsonl|parquet> file in {folder} (found: {present})", "name the files after dataset.train_split/eval_split or point at one file"
    )


def _read_table(path: Path, fmt: Optional[str]) -> "pd.DataFrame":
    import pandas as pd

    fmt = fmt or _SUFFIXES.get(path.suffix.lower())
    readers: dict[Optional[str], Callable[[Path], pd.DataFrame]] = {
        "csv": pd.read_csv,
        "tsv": lambda p: pd.read_csv(p, sep="\t"),
        "jsonl": lambda p: pd.read_json(p, lines=True),
        "parquet": pd.read_parquet,
    }
    if fmt not in readers:
        raise ConfigError(f"cannot tell the format of {path}", "use a .csv/.tsv/.jsonl/.parquet suffix or set dataset.format")
    try:
        frame = readers[fmt](path)
    except (ValueError, OSError) as exc:  # pandas, pyarrow and decoders all raise these
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"cannot read {path} as {fmt}: {reason}", "check the file is complete and dataset.format is right") from exc
    if frame.empty:
        raise ConfigError(f"{path} has no rows", "point dataset.path at a file with data")
    return frame


def _read_hf_disk(path: Path, options: DatasetOptions) -> _Frames:
    try:
        import datasets
    except ImportError:
        raise ConfigError(f"{path} is a Hugging Face save_to_disk folder but `datasets` is not installed", "pip install datasets") from None
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        missing = [s for s in (options.train_split, options.eval_split) if s not in loaded]
        if missing:
            raise ConfigError(f"{path} has no split {missing[0]!r} (splits: {', '.join(loaded)})", "set dataset.train_split and dataset.eval_split")
        features = loaded[options.train_split].features
        train, eval_ = (loaded[s].to_pandas() for s in (options.train_split, options.eval_split))
    else:
        features = loaded.features
        train, eval_ = _split_frame(loaded.to_pandas(), options.seed)
    return train, eval_, getattr(features.get(options.label_column), "names", None)


def _split_frame(frame: "pd.DataFrame", seed: int) -> tuple["pd.DataFrame", "pd.DataFrame"]:
    """A deterministic 80/20 split of one table; rows keep their file order."""
    if len(frame) < 2:
        raise ConfigError("a single dataset file needs at least 2 rows to split into train and eval", "add rows or give a folder with train and eval files")
    order = np.random.default_rng(seed).permutation(len(frame))
    n_eval = max(1, round(0.2 * len(frame)))
    return frame.iloc[np.sort(order[n_eval:])], frame.iloc[np.sort(order[:n_eval])]


def _capped(frame: "pd.DataFrame", size: int, seed: int) -> "pd.DataFrame":
    """At most ``size`` rows (0 = all), a seeded sample in file order: a sorted file stays mixed."""
    if not size or len(frame) <= size:
        return frame
    return frame.iloc[np.sort(np.random.default_rng(seed).choice(len(frame), size, replace=False))]


def _column(frame: "pd.DataFrame", name: str, role: str) -> "pd.Series":
    if name not in frame.columns:
        columns = ", ".join(map(str, frame.columns))
        raise ConfigError(f"{role} column {name!r} not found (columns: {columns})", f"set dataset.{role}_column to one of them")
    column = frame[name]
    if column.isna().any():
        raise ConfigError(f"{role} column {name!r} has {int(column.isna().sum())} missing values", "drop or fill those rows")
    return column


def _encode_labels(raw: list["pd.Series"], names: Optional[list[str]], remap: bool = False) -> tuple[list[np.ndarray], list[str]]:
    """Labels as ids 0..K-1 and their names.

    Non-negative integers stay as they are (class ``i`` is id ``i``); strings map to
    sorted ids (they have no numeric meaning). Negative integers (``-1`` often marks an
    unlabelled row) are refused unless ``remap`` (``dataset.remap_labels=true``) asks to
    map the sorted distinct values to 0..K-1: a silent remap could turn "unlabelled"
    into a class.
    """
    import pandas as pd

    values = pd.concat(raw, ignore_index=True)
    numeric = pd.api.types.is_numeric_dtype(values) and bool((values % 1 == 0).all())
    raw = [series.astype(np.int64) if numeric else series.astype(str) for series in raw]
    values = pd.concat(raw, ignore_index=True)
    if names is not None:
        if values.min() < 0 or values.max() >= len(names):
            raise ConfigError(
                f"labels outside 0..{len(names) - 1} (e.g. -1 in an unlabelled test split)", "pick labelled splits with dataset.train_split/eval_split"
            )
        return [series.to_numpy(np.int64) for series in raw], list(names)
    if numeric and not remap:
        if values.min() < 0:
            negative = sorted({int(v) for v in values.unique() if v < 0})
            raise ConfigError(
                f"label column has negative values ({', '.join(map(str, negative[:5]))}): labels must be 0..K-1",
                "drop the unlabelled rows, or dataset.remap_labels=true to map the sorted distinct values to 0..K-1",
            )
        return [series.to_numpy(np.int64) for series in raw], [str(i) for i in range(int(values.max()) + 1)]
    ids = {key: i for i, key in enumerate(sorted(values.unique()))}
    return [series.map(ids).to_numpy(np.int64) for series in raw], [str(key) for key in ids]


# --- shared ----------------------------------------------------------------------------


def _text_task(texts: Sequence[list[str]], labels: Sequence[np.ndarray], names: list[str], seq_len: int, tokenizer: Any) -> TaskData:
    if tokenizer is None:  # the embedded tokenizer: encoded by tokenizers alone
        tokenizer = DeferredTokenizer(embedded_tokenizer)
        core = _embedded_encoder(seq_len)  # one for both splits
        encode: Callable[[list[str]], dict[str, np.ndarray]] = lambda t: _encode_embedded(core, t, seq_len)  # noqa: E731
    else:
        if tokenizer.pad_token is None:
            raise ConfigError("the tokenizer has no padding token", "set tokenizer.pad_token or use another")
        encode = lambda t: _encode(tokenizer, t, seq_len)  # noqa: E731
    splits = [Split(encode(list(t)), np.asarray(y, dtype=np.int64), list(t)) for t, y in zip(texts, labels)]
    return TaskData("text-classification", len(names), names, tokenizer, seq_len, *splits)  # type: ignore[arg-type]


def _encode(tokenizer: Any, texts: list[str], seq_len: int) -> dict[str, np.ndarray]:
    """``input_ids`` and ``attention_mask``, padded and truncated to exactly ``seq_len``."""
    encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=seq_len, return_tensors="np")
    return {key: np.asarray(encoded[key], dtype=np.int64) for key in ("input_ids", "attention_mask")}


def _load_corpus(options: DatasetOptions, seq_len: int, tokenizer: Any) -> TaskData:
    """The embedded text corpus as a causal language-modelling task (``task="causal-lm"``)
    for training decoder LLMs.

    Each split is its documents' token stream (end-of-text between documents) cut into
    non-overlapping windows of ``seq_len`` tokens: ``input_ids`` and an all-ones
    ``attention_mask`` (no padding, as LLM pretraining packs text), and ``labels`` the
    same ids (the loss shifts them: position t predicts token t + 1). ``tokenizer``
    None is the embedded byte-level BPE (:func:`harness.generation.tokenizer.corpus_tokenizer`).
    """
    from harness.generation.corpus import load_corpus, token_stream, windows
    from harness.generation.tokenizer import corpus_tokenizer

    tokenizer = corpus_tokenizer() if tokenizer is None else tokenizer
    text = load_corpus(options)
    splits: dict[str, Split] = {}
    for name, documents in (("train", text.train), ("eval", text.eval)):
        stream = token_stream(tokenizer, documents)
        if len(stream) < seq_len:
            raise ConfigError(
                f"the corpus's {name} split has {len(stream)} tokens, fewer than one window of {seq_len}",
                f"raise dataset.{name}_size or lower scenario.seq_len",
            )
        ids = windows(stream, seq_len, len(stream))
        splits[name] = Split({"input_ids": ids, "attention_mask": np.ones_like(ids)}, ids)
    return TaskData("causal-lm", 0, [], tokenizer, seq_len, splits["train"], splits["eval"])


_LOADERS: dict[str, Callable[[DatasetOptions, int, Any], TaskData]] = {
    "sentiment": _load_sentiment,
    "digits": _load_digits,
    "files": _load_files,
    "corpus": _load_corpus,
}
