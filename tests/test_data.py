"""Datasets: deterministic, well-shaped, non-trivial, and clear when the user's files are wrong."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.data import DatasetOptions, TaskData, embedded_tokenizer, load_dataset, vocabulary
from harness.errors import ConfigError


def sentiment(seq_len: int = 32, **options) -> TaskData:
    options = {"train_size": 400, "eval_size": 100, **options}
    return load_dataset(DatasetOptions(**options), seq_len=seq_len)


@pytest.fixture(scope="module")
def full() -> TaskData:
    """The default-sized sentiment task, as a training run would see it."""
    return load_dataset(DatasetOptions(), seq_len=32)


# --- options -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, value",
    [
        ("kind", "video"),
        ("format", "xlsx"),
        ("train_size", 0),
        ("eval_size", -1),
        ("image_size", 0),
        ("seed", -3),
    ],
)
def test_bad_option_names_the_key(key, value):
    with pytest.raises(ValueError, match=rf"^dataset\.{key}=.*fix: "):
        DatasetOptions(**{key: value})


def test_files_kind_needs_a_path():
    with pytest.raises(ValueError, match=r"dataset\.path"):
        DatasetOptions(kind="files")


# --- sentiment ---------------------------------------------------------------------------


def test_same_seed_same_data_other_seed_other_data():
    first, again, other = sentiment(seed=1), sentiment(seed=1), sentiment(seed=2)
    assert first.train.texts == again.train.texts and first.eval.texts == again.eval.texts
    for name in first.input_names:
        np.testing.assert_array_equal(first.train.features[name], again.train.features[name])
    np.testing.assert_array_equal(first.eval.labels, again.eval.labels)
    assert first.fingerprint() == again.fingerprint()
    assert other.train.texts != first.train.texts
    assert other.fingerprint() != first.fingerprint()


def test_fingerprint_follows_the_features():
    assert sentiment(seq_len=32).fingerprint() != sentiment(seq_len=48).fingerprint()


def test_labels_are_balanced(full):
    assert full.num_labels == 2 and full.label_names == ["negative", "positive"]
    for split in (full.train, full.eval):
        assert np.bincount(split.labels).tolist() == [len(split) // 2] * 2
    odd = sentiment(train_size=7, eval_size=3)
    assert abs(np.bincount(odd.train.labels, minlength=2)[0] - 3.5) == 0.5


def test_shapes_and_dtypes(full):
    assert full.task == "text-classification" and full.seq_len == 32
    assert full.input_names == ("input_ids", "attention_mask")
    for split, n in ((full.train, 4000), (full.eval, 1000)):
        assert len(split) == n and len(split.texts) == n
        assert split.labels.dtype == np.int64 and split.labels.shape == (n,)
        for name in full.input_names:
            assert split.features[name].dtype == np.int64
            assert split.features[name].shape == (n, 32)


def test_sentences_are_short_distinct_and_fully_in_vocabulary(full):
    tokenizer = full.tokenizer
    lengths = [len(ids) for ids in tokenizer(full.train.texts + full.eval.texts)["input_ids"]]
    assert max(lengths) <= 24
    assert len(set(full.train.texts)) == len(full.train)
    assert not set(full.train.texts) & set(full.eval.texts)
    assert tokenizer.unk_token_id not in full.train.features["input_ids"]


def test_attention_mask_marks_exactly_the_real_tokens(full):
    ids, mask = full.train.features["input_ids"], full.train.features["attention_mask"]
    pad = full.tokenizer.pad_token_id
    np.testing.assert_array_equal(mask, (ids != pad).astype(np.int64))
    lengths = mask.sum(axis=1)
    np.testing.assert_array_equal(mask, (np.arange(32) < lengths[:, None]).astype(np.int64))
    rows = np.arange(len(ids))
    assert (ids[:, 0] == full.tokenizer.cls_token_id).all()
    assert (ids[rows, lengths - 1] == full.tokenizer.sep_token_id).all()


def test_short_seq_len_truncates_and_keeps_sep():
    data = sentiment(seq_len=6, train_size=50, eval_size=10)
    ids = data.train.features["input_ids"]
    assert ids.shape == (50, 6) and data.train.features["attention_mask"].all()
    assert (ids[:, -1] == data.tokenizer.sep_token_id).all()


def test_seq_len_must_hold_cls_and_sep():
    with pytest.raises(ConfigError, match="seq_len"):
        sentiment(seq_len=1)


def test_bag_of_words_cannot_solve_it(full):
    """Negation and "but" decide labels, so word counts alone stay well short of perfect."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = CountVectorizer(token_pattern=r"\S+")
    model = LogisticRegression(max_iter=2000)
    model.fit(vectorizer.fit_transform(full.train.texts), full.train.labels)
    accuracy = model.score(vectorizer.transform(full.eval.texts), full.eval.labels)
    assert 0.55 < accuracy < 0.9


def test_negation_and_but_decide_the_label(full):
    texts = dict(zip(full.train.texts, full.train.labels))
    positive, negative = {"good", "great", "excellent"}, {"bad", "terrible", "awful"}
    for text, label in texts.items():
        words = text.split()
        if "but" in words or "and" in words or not set(words) & (positive | negative):
            continue
        expected = bool(set(words) & positive) != bool(set(words) & {"not", "never", "hardly"})
        assert label == int(expected), text


# --- tokenizer ---------------------------------------------------------------------------


def test_tokenizer_round_trip_and_unknown_words(tmp_path, full):
    tokenizer = embedded_tokenizer()
    assert tokenizer.convert_ids_to_tokens(list(range(5))) == list(vocabulary()[:5])
    assert tokenizer.pad_token_id == 0
    tokenizer.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    texts = full.eval.texts[:50] + ["The MOVIE was zorgly!"]
    assert reloaded(texts)["input_ids"] == tokenizer(texts)["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("The MOVIE was zorgly!")["input_ids"])
    assert tokens == ["[CLS]", "the", "movie", "was", "[UNK]", "[UNK]", "[SEP]"]
    data = load_dataset(DatasetOptions(train_size=20, eval_size=10), seq_len=32, tokenizer=reloaded)
    assert data.tokenizer is reloaded
    expected = sentiment(train_size=20, eval_size=10).eval.features["input_ids"]
    np.testing.assert_array_equal(data.eval.features["input_ids"], expected)


# --- batching ----------------------------------------------------------------------------


@pytest.mark.parametrize("shuffle", [False, True])
def test_batches_cover_every_example_once(shuffle):
    data = sentiment(train_size=50, eval_size=23)
    batches = list(data.batches("eval", 5, shuffle=shuffle, seed=3))
    assert [len(b["labels"]) for b in batches] == [5, 5, 5, 5, 3]
    assert set(batches[0]) == {"input_ids", "attention_mask", "labels"}
    seen = np.concatenate([b["input_ids"] for b in batches])
    assert sorted(map(tuple, seen)) == sorted(map(tuple, data.eval.features["input_ids"]))
    assert len(list(data.batches("eval", 5, drop_last=True))) == 4
    assert sum(len(b["labels"]) for b in data.batches("train", 8, limit=20)) == 20


def test_sample_batch_cycles_when_the_split_is_small():
    data = sentiment(train_size=10, eval_size=3)
    batch = data.sample_batch(8)
    assert set(batch) == {"input_ids", "attention_mask"}
    np.testing.assert_array_equal(batch["input_ids"], data.eval.features["input_ids"][[0, 1, 2] * 2 + [0, 1]])


# --- digits ------------------------------------------------------------------------------


def test_digits_shapes_classes_and_normalisation():
    data = load_dataset(DatasetOptions(kind="digits", image_size=16))
    assert data.task == "image-classification" and data.num_labels == 10 and data.tokenizer is None
    assert data.input_names == ("pixel_values",)
    pixels = data.train.features["pixel_values"]
    assert pixels.dtype == np.float32 and pixels.shape == (len(data.train), 1, 16, 16)
    assert len(data.train) + len(data.eval) == 1797
    assert set(data.train.labels) == set(data.eval.labels) == set(range(10))
    assert abs(pixels.mean()) < 0.1 and 0.8 < pixels.std() < 1.2
    capped = load_dataset(DatasetOptions(kind="digits", train_size=100, eval_size=20, seed=4))
    assert (len(capped.train), len(capped.eval)) == (100, 20)
    assert capped.eval.features["pixel_values"].shape[2:] == (32, 32)


# --- files -------------------------------------------------------------------------------

WRITERS = {
    "csv": lambda frame, path: frame.to_csv(path, index=False),
    "tsv": lambda frame, path: frame.to_csv(path, sep="\t", index=False),
    "jsonl": lambda frame, path: frame.to_json(path, orient="records", lines=True),
    "parquet": lambda frame, path: frame.to_parquet(path),
}


def reviews(n: int, offset: int = 0) -> pd.DataFrame:
    words = ["good", "bad"]
    return pd.DataFrame({"review": [f"the movie was {words[i % 2]} number {i + offset}" for i in range(n)], "stars": [i % 2 for i in range(n)]})


def files_options(path: Path, **extra) -> DatasetOptions:
    return DatasetOptions(kind="files", path=str(path), text_column="review", label_column="stars", **extra)


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_folder_of_split_files_round_trips(tmp_path, fmt):
    train, test = reviews(12), reviews(4, offset=100)
    WRITERS[fmt](train, tmp_path / f"train.{fmt}")
    WRITERS[fmt](test, tmp_path / f"test.{fmt}")
    data = load_dataset(files_options(tmp_path), seq_len=16)
    assert data.train.texts == train["review"].tolist() and data.eval.texts == test["review"].tolist()
    np.testing.assert_array_equal(data.eval.labels, [0, 1, 0, 1])
    assert data.label_names == ["0", "1"] and data.eval.features["input_ids"].shape == (4, 16)


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_single_file_splits_80_20_deterministically(tmp_path, fmt):
    path = tmp_path / f"all.{fmt}"
    WRITERS[fmt](reviews(20), path)
    data = load_dataset(files_options(path))
    assert (len(data.train), len(data.eval)) == (16, 4)
    assert sorted(data.train.texts + data.eval.texts) == sorted(reviews(20)["review"])
    assert load_dataset(files_options(path)).fingerprint() == data.fingerprint()
    assert load_dataset(files_options(path, seed=1)).eval.texts != data.eval.texts


def test_caps_sample_rows_in_file_order(tmp_path):
    WRITERS["csv"](reviews(40), tmp_path / "all.csv")
    data = load_dataset(files_options(tmp_path / "all.csv", train_size=10, eval_size=0))
    assert (len(data.train), len(data.eval)) == (10, 8)
    numbers = [int(text.split()[-1]) for text in data.train.texts]
    assert numbers == sorted(numbers)


def test_string_labels_map_to_sorted_ids_and_negative_ones_only_when_asked(tmp_path):
    frame = pd.DataFrame({"text": ["a", "b", "c", "d", "e"], "label": ["pos", "neg", "meh", "pos", "neg"]})
    frame.to_csv(tmp_path / "train.csv", index=False)
    frame.to_csv(tmp_path / "test.csv", index=False)
    data = load_dataset(DatasetOptions(kind="files", path=str(tmp_path)))
    assert data.label_names == ["meh", "neg", "pos"] and data.num_labels == 3
    np.testing.assert_array_equal(data.train.labels, [2, 1, 0, 2, 1])
    for split in ("train", "test"):
        frame.assign(label=[1, -1, 1, -1, 1]).to_csv(tmp_path / f"{split}.csv", index=False)
    with pytest.raises(ConfigError) as err:
        load_dataset(DatasetOptions(kind="files", path=str(tmp_path)))  # -1 often means "unlabelled"
    assert "negative values (-1)" in err.value.one_line() and "dataset.remap_labels=true" in err.value.one_line()
    data = load_dataset(DatasetOptions(kind="files", path=str(tmp_path), remap_labels=True))
    assert data.label_names == ["-1", "1"]
    np.testing.assert_array_equal(data.eval.labels, [1, 0, 1, 0, 1])


def written(path: Path, content: str | bytes | pd.DataFrame) -> Path:
    if isinstance(content, pd.DataFrame):
        content.to_csv(path, index=False)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: d / "nowhere.csv", r"does not exist"),
        (lambda d: written(d / "x.txt", reviews(5)), r"cannot tell the format"),
        (lambda d: written(d / "bad.parquet", b"not parquet"), r"cannot read .* as parquet"),
        (lambda d: written(d / "empty.csv", ""), r"cannot read .* as csv"),
        (lambda d: written(d / "train.csv", reviews(5)).parent, r"no test\.<csv"),
        (lambda d: written(d / "nan.csv", reviews(5).assign(stars=[0, None, 1, 0, 1])), r"label column 'stars' has 1 missing"),
    ],
)
def test_bad_files_give_one_line_config_errors(tmp_path, setup, message):
    with pytest.raises(ConfigError, match=message) as caught:
        load_dataset(files_options(setup(tmp_path)))
    assert "\n" not in caught.value.one_line() and caught.value.fix


def test_missing_column_names_the_columns_that_exist(tmp_path):
    reviews(5).to_csv(tmp_path / "all.csv", index=False)
    with pytest.raises(ConfigError, match=r"text column 'text' not found \(columns: review, stars\)"):
        load_dataset(DatasetOptions(kind="files", path=str(tmp_path / "all.csv"), label_column="stars"))


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None, reason="`datasets` is installed")
def test_hf_folder_without_datasets_says_how_to_install(tmp_path):
    (tmp_path / "dataset_dict.json").write_text('{"splits": ["train", "test"]}')
    with pytest.raises(ConfigError, match="datasets") as caught:
        load_dataset(files_options(tmp_path))
    assert caught.value.fix == "pip install datasets"


@pytest.mark.skipif(importlib.util.find_spec("datasets") is None, reason="`datasets` is not installed")
def test_hf_folder_loads_splits_and_class_names(tmp_path):
    import datasets

    features = datasets.Features({"review": datasets.Value("string"), "stars": datasets.ClassLabel(names=["neg", "pos"])})
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_pandas(reviews(10), features=features),
            "test": datasets.Dataset.from_pandas(reviews(4), features=features),
        }
    ).save_to_disk(str(tmp_path / "hf"))
    data = load_dataset(files_options(tmp_path / "hf"))
    assert data.label_names == ["neg", "pos"] and (len(data.train), len(data.eval)) == (10, 4)


@pytest.mark.parametrize("seq_len", [4, 12, 128])
def test_embedded_encoding_without_transformers_gives_the_tokenizers_ids(seq_len):
    """The data stage encodes with ``tokenizers`` alone (no transformers import); its ids
    and masks equal the saved ``PreTrainedTokenizerFast``'s, truncation and padding too."""
    data = load_dataset(DatasetOptions(train_size=64, eval_size=32), seq_len=seq_len)
    assert not isinstance(data.tokenizer, type(embedded_tokenizer()))  # not built yet
    tokenizer = embedded_tokenizer()
    texts = [*data.train.texts, *data.eval.texts, "an UNKNOWN word", ""]
    from harness.data import _embedded_encoder, _encode, _encode_embedded

    slow, fast = _encode(tokenizer, texts, seq_len), _encode_embedded(_embedded_encoder(seq_len), texts, seq_len)
    for key in ("input_ids", "attention_mask"):
        np.testing.assert_array_equal(fast[key], slow[key])
    assert data.tokenizer.pad_token == "[PAD]" and data.tokenizer.vocab_size == tokenizer.vocab_size  # built on first use


def test_a_text_run_encodes_without_importing_transformers():
    code = (
        "import sys; from harness.data import DatasetOptions, load_dataset; "
        "load_dataset(DatasetOptions(train_size=8, eval_size=8), seq_len=16); print('transformers' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
