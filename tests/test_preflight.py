"""Preflight checks, in-process: what a run would fail on is a one-line ConfigError first.

Each check gets its own cases plus property-based tests (hypothesis) over the values a
careless or hostile user can type: the answer is either "fine" or one line naming the
problem and the fix, never an exception of another kind. The same checks through the
real ``harness`` command are in ``tests/test_bad_input.py``.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import preflight
from harness.data import DatasetOptions, check_labels
from harness.errors import ConfigError
from harness.models import BERT_DEFAULTS, check_folder

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def one_line(exc: ConfigError) -> str:
    line = exc.one_line()
    assert "\n" not in line and "(fix: " in line, line
    return line


@pytest.fixture(scope="module")
def plugins():
    from harness.plugins import load_plugins

    return load_plugins()


@pytest.fixture(scope="module")
def spec(plugins, tmp_path_factory):
    from harness.testing import compose_overrides

    results = tmp_path_factory.mktemp("results")
    return compose_overrides(["+scenario=bert_fp32", "model=bert_tiny"], plugins, results)


def with_scenario(spec, **values):
    return dataclasses.replace(spec, scenario_options=dataclasses.replace(spec.scenario_options, **values))


def with_model(spec, **values):
    return dataclasses.replace(spec, model=dataclasses.replace(spec.model, **values))


# --- config keys -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "typo, nearest",
    [("result_dir", "results_dir"), ("resuls_dir", "results_dir"), ("cachedir", "cache_dir"), ("overwite", "overwrite"), ("lancher", "launcher")],
)
def test_unknown_top_level_key_names_the_nearest(typo, nearest):
    with pytest.raises(ConfigError) as err:
        preflight.check_top_level(["backend", typo])
    assert f"unknown top-level config key '{typo}'" in one_line(err.value)
    assert f"did you mean {nearest}?" in err.value.one_line()


@SETTINGS
@given(key=st.text(min_size=1, max_size=20))
def test_any_top_level_key_is_known_or_one_line(key):
    if key in preflight.TOP_LEVEL_KEYS:
        preflight.check_top_level([key])
        return
    with pytest.raises(ConfigError) as err:
        preflight.check_top_level([key])
    assert "valid top-level keys: backend" in " ".join(err.value.one_line().split())


def test_nested_unknown_key_names_the_nearest():
    from harness.config import typed
    from harness.scenarios.inference import InferenceOptions

    with pytest.raises(ConfigError) as err:
        typed(InferenceOptions, {"accuracy": {"limt": 1}}, "scenario")
    assert "did you mean scenario.accuracy.limit? valid keys of scenario.accuracy: enabled" in err.value.one_line()


# --- outputs ---------------------------------------------------------------------------------------


def test_output_folder_is_created_and_probed(tmp_path):
    preflight.check_writable(tmp_path / "a" / "b", "results_dir")
    assert (tmp_path / "a" / "b").is_dir() and list((tmp_path / "a" / "b").iterdir()) == []  # the probe is gone


@pytest.mark.parametrize("where", ["itself", "a parent"])
def test_a_file_in_the_way_of_an_output_folder(where, tmp_path):
    (tmp_path / "file").write_text("x")
    folder = tmp_path / "file" if where == "itself" else tmp_path / "file" / "sub"
    with pytest.raises(ConfigError) as err:
        preflight.check_writable(folder, "results_dir")
    assert f"'{tmp_path / 'file'}' is a file" in one_line(err.value)


def _mount(args: list[str], where: Path) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    return os.geteuid() == 0 and subprocess.run(["mount", *args, str(where)], capture_output=True).returncode == 0


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 1 MiB tmpfs (root only): a real full or read-only filesystem."""
    where = tmp_path / "mnt"
    if not _mount(["-t", "tmpfs", "-o", "size=1m", "tmpfs"], where):
        pytest.skip("needs root and mount to make a small filesystem")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_a_full_filesystem_is_found(tiny_tmpfs):
    try:
        (tiny_tmpfs / "filler").write_bytes(b"\0" * (2 * 2**20))
    except OSError:
        pass
    with pytest.raises(ConfigError) as err:
        preflight.check_writable(tiny_tmpfs / "results", "results_dir")
    line = one_line(err.value)
    assert "full" in line or "No space left" in line, line


def test_a_read_only_filesystem_is_found(tiny_tmpfs):
    (tiny_tmpfs / "results").mkdir()
    assert subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], capture_output=True).returncode == 0
    with pytest.raises(ConfigError) as err:
        preflight.check_writable(tiny_tmpfs / "results", "results_dir")
    assert "Read-only file system" in one_line(err.value)


def test_a_read_only_folder_is_found(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes through permission bits (the read-only filesystem test covers root)")
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o500)
    with pytest.raises(ConfigError, match="not writable: Permission denied"):
        preflight.check_writable(tmp_path / "ro", "results_dir")


def test_a_write_failing_with_enospc_is_a_full_filesystem(tmp_path, monkeypatch):
    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(ConfigError, match="the filesystem is full"):
        preflight.check_writable(tmp_path, "cache_dir")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []  # the probe did not stay behind


def test_little_free_space_is_a_full_filesystem(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(100, 100, 1024))
    with pytest.raises(ConfigError, match=r"on a full filesystem \(0\.0 MiB free\)"):
        preflight.check_writable(tmp_path, "results_dir")


# --- model shapes ----------------------------------------------------------------------------------


def test_default_bert_facts_are_transformers_own():
    import transformers

    defaults = transformers.BertConfig().to_dict()
    assert {key: defaults[key] for key in BERT_DEFAULTS} == BERT_DEFAULTS


@SETTINGS
@given(hidden=st.integers(1, 4096), heads=st.integers(1, 64), seq_len=st.integers(2, 5000), positions=st.integers(2, 4096))
def test_shapes_pass_or_fail_with_one_line(spec, hidden, heads, seq_len, positions):
    config = {**spec.model.config, "hidden_size": hidden, "num_attention_heads": heads, "max_position_embeddings": positions}
    candidate = with_scenario(with_model(spec, config=config), seq_len=seq_len)
    bad = hidden % heads != 0 or seq_len > positions
    if not bad:
        preflight.check_model(candidate)
        return
    with pytest.raises(ConfigError) as err:
        preflight.check_model(candidate)
    line = one_line(err.value)
    assert ("not a multiple of num_attention_heads" in line) if hidden % heads else ("max_position_embeddings" in line)


def test_seq_len_beyond_positions_names_both_fixes(spec):
    with pytest.raises(ConfigError) as err:
        preflight.check_model(with_scenario(spec, seq_len=1024))
    line = one_line(err.value)
    assert "scenario.seq_len=1024 is longer than the 512 positions" in line
    assert "scenario.seq_len=<at most 512>" in line and "model.config.max_position_embeddings=1024" in line


def test_nested_seq_len_keys_are_checked_when_their_stage_is_on(spec):
    pruning = dataclasses.replace(spec.scenario_options.pruning, finetune_seq_len=600)
    preflight.check_model(with_scenario(spec, pruning=pruning))  # pruning off: its shapes are never used
    with pytest.raises(ConfigError, match=r"scenario\.pruning\.finetune_seq_len=600"):
        preflight.check_model(with_scenario(spec, pruning=dataclasses.replace(pruning, method="magnitude")))


def test_vocabulary_smaller_than_the_tokenizer(spec):
    with pytest.raises(ConfigError, match=r"vocab_size=20 .* embedded tokenizer"):
        preflight.check_model(with_model(spec, config={**spec.model.config, "vocab_size": 20}))


# --- memory ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [10**20, 99999999999999999999, 2**40])
def test_absurd_batch_sizes_are_refused_with_a_size_that_fits(spec, batch):
    with pytest.raises(ConfigError) as err:
        preflight.check_memory(with_scenario(spec, batch_size=batch), None)
    line = one_line(err.value)
    assert f"scenario.batch_size={batch} needs at least" in line and "well below" in line


def test_memory_limit_of_the_launcher_counts(spec):
    preflight.check_memory(with_scenario(spec, batch_size=64), None)
    with pytest.raises(ConfigError, match="this run may use"):
        preflight.check_memory(with_scenario(spec, batch_size=200_000), 64)


@SETTINGS
@given(batch=st.integers(1, 10**30), seq_len=st.integers(2, 512))
def test_memory_bound_grows_with_the_batch(spec, batch, seq_len):
    config = {**BERT_DEFAULTS, **spec.model.config}
    small = preflight.memory_lower_bound("bert", config, batch, seq_len, 32)
    assert preflight.memory_lower_bound("bert", config, batch + 1, seq_len, 32) > small > 0


# --- data ------------------------------------------------------------------------------------------


def _csv(folder: Path, labels: list, name: str = "data.csv") -> DatasetOptions:
    folder.mkdir(parents=True, exist_ok=True)
    rows = "\n".join(f"the movie was good {i},{label}" for i, label in enumerate(labels))
    (folder / name).write_text("text,label\n" + rows + "\n")
    return DatasetOptions(name="files", kind="files", path=str(folder / name))


def test_five_labels_on_a_two_label_model(tmp_path):
    options = _csv(tmp_path, [0, 1, 2, 3, 4] * 4)
    with pytest.raises(ConfigError) as err:
        check_labels(options, 2, "model 'bert_tiny'")
    line = one_line(err.value)
    assert "has 5 label values (0, 1, 2, 3, 4) but model 'bert_tiny' has num_labels=2" in line
    assert "model.num_labels=5" in line
    check_labels(options, 5, "model 'bert_tiny'")


def test_negative_labels_are_refused_unless_remapped(tmp_path):
    options = _csv(tmp_path, [-1, 1] * 5)
    with pytest.raises(ConfigError) as err:
        check_labels(options, 2, "the model")
    assert "negative values (-1)" in err.value.one_line() and "dataset.remap_labels=true" in err.value.one_line()
    check_labels(dataclasses.replace(options, remap_labels=True), 2, "the model")


@SETTINGS
@given(labels=st.lists(st.integers(-3, 12), min_size=4, max_size=30), num_labels=st.integers(1, 12), remap=st.booleans())
def test_labels_against_num_labels(tmp_path, labels, num_labels, remap):
    options = dataclasses.replace(_csv(tmp_path / str(abs(hash((tuple(labels), remap)))), labels), remap_labels=remap)
    classes = len(set(labels)) if remap else max(labels) + 1
    try:
        check_labels(options, num_labels, "the model")
    except ConfigError as exc:
        line = one_line(exc)
        assert (min(labels) < 0 and not remap) or classes > num_labels, line
    else:
        assert (remap or min(labels) >= 0) and classes <= num_labels


def test_family_and_data_must_match(spec):
    with pytest.raises(ConfigError, match=r"model.family=bert does text-classification but dataset 'digits'"):
        preflight.check_dataset(dataclasses.replace(spec, dataset=DatasetOptions(name="digits", kind="digits")))


def test_unknown_words_get_one_warning_with_their_share(tmp_path, capsys):
    from harness.data import load_dataset

    options = _csv(tmp_path, [0, 1] * 10)
    (tmp_path / "data.csv").write_text("text,label\n" + "\n".join(f"zorglub blah {i},{i % 2}" for i in range(20)) + "\n")
    data = load_dataset(options, seq_len=16)
    load_dataset(options, seq_len=16)
    assert data.unknown_share == pytest.approx(1.0)
    err = capsys.readouterr().err
    assert err.count("100% of the words in dataset.path") == 1 and "[UNK]" in err and "(fix: " in err


# --- checkpoint folders ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    import transformers

    folder = tmp_path_factory.mktemp("bert")
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=200, num_labels=2)
    transformers.BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_a_good_folder_passes(bert_folder):
    assert check_folder(bert_folder, "bert")["hidden_size"] == 32


@pytest.mark.parametrize(
    "damage, needle",
    [
        (lambda f: (f / "config.json").write_text((f / "config.json").read_text()[:40]), "is not valid JSON"),
        (lambda f: (f / "config.json").write_text("[1, 2]"), "holds a JSON list, not a model config object"),
        (lambda f: (f / "config.json").unlink(), "is not a checkpoint folder (no config.json)"),
        (lambda f: (f / "model.safetensors").write_bytes(b""), "is empty (0 bytes)"),
        (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:-500]), "is not a complete safetensors file"),
        (lambda f: (f / "model.safetensors").unlink(), "has no .safetensors weights"),
        (lambda f: _edit_config(f, hidden_size=64, intermediate_size=128), "do not match its config.json"),
        (lambda f: _edit_config(f, num_hidden_layers=3), "the weights have 2 encoder layers, the config num_hidden_layers=3"),
        (lambda f: _edit_config(f, vocab_size=300), "word_embeddings.weight is [200, 32]"),
    ],
    ids=[
        "truncated-config",
        "config-not-object",
        "no-config",
        "zero-byte-weights",
        "truncated-weights",
        "no-weights",
        "other-width",
        "other-depth",
        "other-vocab",
    ],
)
def test_damaged_folders_are_config_errors(bert_folder, tmp_path, damage, needle):
    folder = _copy(bert_folder, tmp_path / "ckpt")
    damage(folder)
    with pytest.raises(ConfigError) as err:
        check_folder(folder, "bert")
    assert needle in one_line(err.value)


def _edit_config(folder: Path, **values) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(values)
    (folder / "config.json").write_text(json.dumps(config))


def test_a_bert_folder_is_not_a_resnet(bert_folder):
    with pytest.raises(ConfigError) as err:
        check_folder(bert_folder, "resnet")
    assert "model.family=resnet but" in one_line(err.value) and "(fix: model.family=bert)" in err.value.one_line()


@SETTINGS
@given(cut=st.integers(0, 4000))
def test_any_truncation_of_the_weights_is_caught(bert_folder, tmp_path, cut):
    folder = tmp_path / f"cut{cut}"
    if not folder.exists():
        folder = _copy(bert_folder, folder)
    data = (bert_folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: max(0, len(data) - 1 - cut)])
    with pytest.raises(ConfigError):
        check_folder(folder, "bert")


def test_weights_missing_from_a_loadable_folder_are_refused_at_load(bert_folder, tmp_path):
    """What the header check cannot see (a renamed tensor) from_pretrained reports; the
    loader turns it into a ConfigError instead of running a partly random model."""
    from safetensors.numpy import load_file, save_file

    from harness.models import ModelOptions, load_model

    folder = _copy(bert_folder, tmp_path / "ckpt")
    tensors = load_file(str(folder / "model.safetensors"))
    tensors["renamed.weight"] = tensors.pop("bert.encoder.layer.1.output.dense.weight")
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConfigError, match="weights are missing from the checkpoint"):
        load_model(ModelOptions(name="x", family="bert"), str(folder))


# --- threads ---------------------------------------------------------------------------------------


@SETTINGS
@given(intra=st.integers(0, 10**6), inter=st.integers(0, 10**6))
def test_thread_counts_are_clamped_to_the_cores(spec, intra, inter):
    options = dataclasses.replace(spec.backend_options, intra_op_threads=intra, inter_op_threads=inter)
    bounded, warnings = preflight.bound_threads(dataclasses.replace(spec, backend_options=options))
    cores = preflight.usable_cores()
    assert bounded.backend_options.intra_op_threads == min(intra, cores)
    assert bounded.backend_options.inter_op_threads == min(inter, cores)
    assert len(warnings) == (intra > cores) + (inter > cores)
    assert all("\n" not in w and f"using {cores}" in w for w in warnings)


@pytest.mark.parametrize("backend, key", [("openvino", "threads"), ("openvino", "num_streams"), ("pytorch", "threads")])
def test_every_builtin_thread_option_is_bounded(plugins, backend, key):
    cls = plugins.registry.backend(backend)
    field = {f.name: f for f in dataclasses.fields(cls.options_type)}[key]
    assert field.metadata.get("bounded_by") == "cores"


# --- the host lock ---------------------------------------------------------------------------------


def test_preflight_refuses_a_planted_lock_symlink(spec, tmp_path, monkeypatch):
    from test_hostlock import plant_symlink

    target = plant_symlink(tmp_path, monkeypatch)
    with pytest.raises(ConfigError, match="symlink"):
        preflight.run(spec, None, host_lock=True)
    assert target.read_text() == "precious\n"
    preflight.run(spec, None, host_lock=False)  # launcher.host_lock=false needs no lock file


def test_the_whole_preflight_passes_a_good_spec(spec):
    checked, warnings = preflight.run(spec, None, host_lock=True)
    assert checked == spec and warnings == []
    assert np.isfinite(preflight.available_memory_bytes())


@pytest.mark.parametrize("scenario", sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "scenario").glob("*.yaml")))
def test_every_shipped_scenario_passes_preflight(plugins, scenario, tmp_path):
    """No false refusals: each scenario as shipped, with its own model and dataset."""
    from harness.testing import compose_overrides

    spec = compose_overrides([f"+scenario={scenario}"], plugins, tmp_path)
    assert preflight.run(spec, None, host_lock=True) == (spec, [])
