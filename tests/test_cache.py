"""The artifact cache heals: atomic writes, checksums verified on read, rebuilt on failure.

A damaged entry (truncated, flipped bytes, a file that no longer matches eager PyTorch)
must cost one warning line and a rebuild, never a failed run or, worse, a wrong number
reused forever. The helpers are tested on their own (property-based over random
damage), then each cache that uses them: ONNX export, accuracy references, compressed
models, checkpoints.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import cache

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


# --- the helpers -------------------------------------------------------------------------------


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "entry.bin"
    cache.atomic_write(path, b"first")
    assert path.read_bytes() == b"first"

    def broken(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError("disk gone")

    with pytest.raises(OSError):
        cache.atomic_write(path, broken)
    assert path.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["entry.bin"]  # no temp file left behind


def test_temp_names_are_unique(tmp_path):
    names = {cache.temp_sibling(tmp_path / "x.npy").name for _ in range(200)}
    assert len(names) == 200 and all(name.startswith(".tmp-") for name in names)


@SETTINGS
@given(data=st.binary(min_size=1, max_size=4096), where=st.integers(0, 4095), flip=st.integers(1, 255), cut=st.integers(0, 4096))
def test_any_flipped_byte_or_truncation_fails_verification(tmp_path, data, where, flip, cut):
    path = tmp_path / "entry.bin"
    cache.atomic_write(path, data)
    cache.seal(path)
    assert cache.verified(path)
    damaged = bytearray(data)
    damaged[where % len(data)] ^= flip
    path.write_bytes(bytes(damaged))
    assert not cache.verified(path)
    path.write_bytes(data[: max(0, len(data) - 1 - cut % len(data))])
    assert not cache.verified(path)
    path.write_bytes(data)
    assert cache.verified(path)


def test_an_entry_without_its_checksum_is_not_verified(tmp_path):
    (tmp_path / "a").write_bytes(b"x")
    assert not cache.verified(tmp_path / "a")
    assert not cache.folder_verified(tmp_path)
    (tmp_path / "a.sha256").write_text("{truncated")
    assert not cache.verified(tmp_path / "a")


def test_folder_manifest_covers_every_file_and_the_required_ones(tmp_path):
    folder = tmp_path / "entry"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"graph")
    (folder / "sub" / "weights.bin").write_bytes(b"w" * 100)
    cache.seal_folder(folder)
    assert cache.folder_verified(folder, ("model.onnx",))
    assert not cache.folder_verified(folder, ("model.onnx", "meta.json"))  # a required file is not listed
    (folder / "sub" / "weights.bin").write_bytes(b"w" * 99)
    assert not cache.folder_verified(folder)


def test_publish_keeps_a_verified_entry_and_replaces_a_broken_one(tmp_path):
    final = tmp_path / "kind" / "key"
    with cache.staging("kind", "key", tmp_path) as built:
        (built / "meta.json").write_text("1")
        cache.publish(built, final, ("meta.json",))
    assert (final / "meta.json").read_text() == "1"
    with cache.staging("kind", "key", tmp_path) as built:
        (built / "meta.json").write_text("2")
        cache.publish(built, final, ("meta.json",))
    assert (final / "meta.json").read_text() == "1"  # another run's complete entry stands
    (final / "meta.json").write_text("1 but damaged")
    with cache.staging("kind", "key", tmp_path) as built:
        (built / "meta.json").write_text("3")
        cache.publish(built, final, ("meta.json",))
    assert (final / "meta.json").read_text() == "3"
    with cache.staging("kind", "key", tmp_path) as built:
        (built / "meta.json").write_text("4")
        cache.publish(built, final, ("meta.json",), replace=True)
    assert (final / "meta.json").read_text() == "4" and cache.folder_verified(final)
    assert sorted(p.name for p in final.parent.iterdir()) == ["key"]  # no staging or old folders left


def test_discard_warns_once_and_removes(tmp_path, capsys):
    folder = tmp_path / "onnx" / "k"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"x")
    cache.discard(folder, "does not match its checksums")
    err = capsys.readouterr().err
    assert not folder.exists()
    assert err.count("\n") == 1 and "does not match its checksums; rebuilding it" in err


def _settled_entry(folder: Path, monkeypatch) -> Path:
    """A sealed folder entry whose files count as settled for stamping (without waiting 2 s)."""
    monkeypatch.setattr(cache, "SETTLED_S", 0.05)
    (folder / "sub").mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"graph" * 100)
    (folder / "sub" / "weights.bin").write_bytes(b"w" * 100)
    cache.seal_folder(folder)
    time.sleep(0.1)  # past SETTLED_S, and past the file system's coarse timestamp tick
    return folder


def _no_hashing(*_args):
    raise AssertionError("a stamped entry was hashed again")


def test_a_verified_folder_is_stamped_and_not_hashed_again(tmp_path, monkeypatch):
    folder = _settled_entry(tmp_path / "entry", monkeypatch)
    assert cache.folder_verified(folder, ("model.onnx",))
    assert (folder / ".verified-checksums.json").is_file()
    monkeypatch.setattr(cache, "file_digest", _no_hashing)
    assert cache.folder_verified(folder, ("model.onnx",))
    assert cache.stamped(folder, "checksums") == {}


@pytest.mark.parametrize("damage", ["flip", "flip_keeping_mtime", "truncate", "extra_file", "reseal"])
def test_any_change_to_a_stamped_folder_voids_its_stamp(tmp_path, monkeypatch, damage):
    folder = _settled_entry(tmp_path / "entry", monkeypatch)
    assert cache.folder_verified(folder) and cache.stamped(folder, "checksums") is not None
    weights = folder / "sub" / "weights.bin"
    before = weights.stat()
    if damage.startswith("flip"):
        with open(weights, "r+b") as handle:  # in place: same inode, same size
            handle.seek(50)
            handle.write(b"x")
        if damage == "flip_keeping_mtime":
            os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))  # ctime still moves
    elif damage == "truncate":
        with open(weights, "r+b") as handle:
            handle.truncate(10)
    elif damage == "extra_file":
        (folder / "stray.bin").write_bytes(b"?")
    else:
        cache.seal_folder(folder)
    assert cache.stamped(folder, "checksums") is None
    if damage not in ("extra_file", "reseal"):
        assert not cache.folder_verified(folder)


def test_a_stamp_needs_the_same_context_and_settled_files(tmp_path, monkeypatch):
    folder = _settled_entry(tmp_path / "entry", monkeypatch)
    cache.stamp(folder, "check", {"runtime": "1.0"}, {"max_abs_diff": 1e-6})
    assert cache.stamped(folder, "check", {"runtime": "1.0"}) == {"max_abs_diff": 1e-6}
    assert cache.stamped(folder, "check", {"runtime": "1.1"}) is None  # another library version checks again
    assert cache.stamped(folder, "other") is None
    monkeypatch.setattr(cache, "SETTLED_S", 3600.0)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "model.onnx").write_bytes(b"just written")
    cache.stamp(fresh, "check")
    assert cache.stamped(fresh, "check") is None and not list(fresh.glob(".verified-*"))


def test_stamps_are_not_content(tmp_path, monkeypatch):
    """A stamp never enters a manifest, an artifact's size or a model folder's digest."""
    from harness.compression.pipeline import files_size
    from harness.serving.gguf import folder_digest

    folder = _settled_entry(tmp_path / "entry", monkeypatch)
    (folder / "config.json").write_text("{}")
    cache.seal_folder(folder)
    time.sleep(0.1)
    size, digest = files_size(folder), folder_digest(folder)
    assert cache.folder_verified(folder) and cache.stamped(folder, "checksums") is not None
    assert files_size(folder) == size and folder_digest(folder) == digest
    cache.seal_folder(folder)
    assert not any(".verified-" in name for name in json.loads((folder / cache.MANIFEST).read_text()))


def test_read_only_cache_is_still_verified(tmp_path, monkeypatch):
    folder = _settled_entry(tmp_path / "entry", monkeypatch)

    def refuse(*_args, **_kwargs):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(cache, "atomic_write", refuse)
    assert cache.folder_verified(folder) and cache.folder_verified(folder)
    assert cache.stamped(folder, "checksums") is None


# --- the caches that use them ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_data():
    from harness.data import DatasetOptions, load_dataset

    return load_dataset(DatasetOptions(train_size=16, eval_size=12), seq_len=16)


def test_truncated_accuracy_reference_is_rebuilt(tiny_model, tiny_data, tmp_path, capsys):
    from harness.accuracy import reference_logits

    first, cached = reference_logits(tiny_model, tiny_data, cache_root=str(tmp_path))
    assert not cached
    (path,) = tmp_path.glob("accuracy/*/logits.npy")
    assert reference_logits(tiny_model, tiny_data, cache_root=str(tmp_path))[1]  # reused while intact
    path.write_bytes(path.read_bytes()[:60])  # the case: every later run failed on it
    again, cached = reference_logits(tiny_model, tiny_data, cache_root=str(tmp_path))
    assert not cached and np.array_equal(again, first)
    assert "does not match its checksums" in capsys.readouterr().err
    assert reference_logits(tiny_model, tiny_data, cache_root=str(tmp_path))[1]  # healed


def test_damaged_checkpoint_is_discarded_so_auto_trains_again(tiny_model, tmp_path, capsys):
    from harness import checkpoints

    folder = checkpoints.save(tiny_model, None, "k", tmp_path, {})
    assert checkpoints.find("k", tmp_path) == folder
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert checkpoints.find("k", tmp_path) is None
    assert not folder.exists() and "rebuilding it" in capsys.readouterr().err


@pytest.mark.slow
def test_onnx_with_flipped_bytes_or_other_numbers_is_rebuilt(tiny_model, tiny_batch, tmp_path, capsys):
    """Both ways a cached ONNX file can lie: damaged bytes (the checksum catches them)
    and a valid, re-sealed graph whose numbers no longer match eager PyTorch."""
    import onnx
    from onnx import numpy_helper

    from harness.export import export_onnx

    first = export_onnx(tiny_model, tiny_batch, str(tmp_path))
    data = bytearray(first.path.read_bytes())
    data[len(data) // 2] ^= 0x01
    first.path.write_bytes(bytes(data))
    again = export_onnx(tiny_model, tiny_batch, str(tmp_path))
    assert not again.cached and again.max_abs_diff <= 1e-3
    assert "does not match its checksums" in capsys.readouterr().err

    model = onnx.load(str(again.path))
    biggest = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    biggest.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(biggest) * 3.0, biggest.name))
    onnx.save(model, str(again.path))
    cache.seal_folder(again.path.parent)  # as if the wrong file had been written by a buggy exporter
    third = export_onnx(tiny_model, tiny_batch, str(tmp_path))
    assert not third.cached and third.max_abs_diff <= 1e-3
    assert "no longer matches eager PyTorch" in capsys.readouterr().err
    assert export_onnx(tiny_model, tiny_batch, str(tmp_path)).cached  # healed, reused again
    assert not [p for p in third.path.parent.parent.iterdir() if p.name.startswith((".tmp-", ".old-"))]


@pytest.mark.slow
def test_a_stamped_onnx_entry_is_reused_without_loading_it(tiny_model, tiny_batch, tmp_path, monkeypatch):
    """Once checked in full, a reuse neither hashes nor checks nor runs the file, until a
    file or the onnxruntime version changes; then the full check runs again."""
    from harness import export

    monkeypatch.setattr(cache, "SETTLED_S", 0.05)
    first = export.export_onnx(tiny_model, tiny_batch, str(tmp_path))
    time.sleep(0.1)
    checked = export.export_onnx(tiny_model, tiny_batch, str(tmp_path))  # the full check, which stamps
    assert checked.cached and (checked.path.parent / ".verified-onnx-reuse.json").is_file()
    for name, module in (("file_digest", cache), ("_is_valid", export), ("onnx_outputs", export), ("eager_outputs", export)):
        monkeypatch.setattr(module, name, _no_hashing)
    again = export.export_onnx(tiny_model, tiny_batch, str(tmp_path))
    assert again.cached and again.max_abs_diff == checked.max_abs_diff and again.path == first.path
    monkeypatch.setattr(export, "_check_context", lambda: {"onnxruntime": "another version"})
    with pytest.raises(AssertionError, match="hashed again"):
        export.export_onnx(tiny_model, tiny_batch, str(tmp_path))


@pytest.mark.slow
def test_damaged_compressed_model_is_rebuilt(tiny_model, tiny_batch, tmp_path, capsys):
    from harness.backend import Artifact
    from harness.compression.pipeline import compress
    from harness.compression.recipes import Recipe
    from harness.data import DatasetOptions, load_dataset
    from harness.export import export_onnx
    from harness.plugins import load_plugins

    backend_cls = load_plugins().registry.backend("onnxruntime")
    backend = backend_cls(backend_cls.options_type())
    exported = export_onnx(tiny_model, tiny_batch, str(tmp_path))
    artifact = Artifact(tiny_model.name, tiny_model.input_names, tiny_model.output_names, onnx_path=exported.path)
    data = load_dataset(DatasetOptions(train_size=16, eval_size=8), seq_len=16)
    recipe = Recipe(mode="dynamic")
    cwd = os.getcwd()
    os.chdir(tmp_path)  # ORT quantization drops temp files in the cwd
    try:
        out, metrics = compress(backend, artifact, recipe, data, exported.key, str(tmp_path), status=lambda _: None)
        (meta,) = tmp_path.glob("compressed/*/meta.json")
        meta.write_text(meta.read_text()[:30])  # truncated meta: formerly a JSONDecodeError in every later run
        again, metrics = compress(backend, artifact, recipe, data, exported.key, str(tmp_path), status=lambda _: None)
        assert not metrics["cached"] and "does not match its checksums" in capsys.readouterr().err
        assert json.loads(meta.read_text())["key"] == metrics["key"]
        assert compress(backend, artifact, recipe, data, exported.key, str(tmp_path), status=lambda _: None)[1]["cached"]
    finally:
        os.chdir(cwd)
