"""What makes two runs the same experiment: run-local keys, portable paths, content digests."""

from __future__ import annotations

from pathlib import Path

from harness import identity, sweep
from harness.cache import content_key

CONFIG = {
    "results_dir": "/tmp/a",
    "cache_dir": None,
    "overwrite": False,
    "launcher": {"isolation": "process", "timeout_s": 600},
    "hardware": {"label": "lab"},
    "backend": {"name": "onnxruntime", "graph_optimization_level": "all", "providers": ["CPUExecutionProvider"]},
    "model": {"name": "bert_small", "path": None, "checkpoint": None, "config": {"hidden_size": 256}},
    "dataset": {"name": "sentiment", "path": None},
    "scenario": {
        "name": "bert_fp32",
        "kind": "inference",
        "batch_size": 1,
        "distributed": {"nproc_per_node": 1, "node_rank": 0, "rdzv_endpoint": "n1:1", "timeout_s": 1800},
    },
}


def test_job_config_drops_exactly_the_run_local_keys() -> None:
    kept = identity.job_config(CONFIG)
    assert set(kept) == {"hardware", "backend", "model", "dataset", "scenario"}
    assert kept["scenario"]["distributed"] == {"nproc_per_node": 1}
    assert CONFIG["scenario"]["distributed"]["node_rank"] == 0  # the input is not modified


def test_sweep_job_key_is_the_hash_of_the_shared_job_config() -> None:
    assert sweep.job_key(CONFIG) == content_key(identity.job_config(CONFIG))
    moved = {**CONFIG, "results_dir": "/elsewhere", "launcher": {"timeout_s": 5}, "overwrite": True}
    assert sweep.job_key(moved) == sweep.job_key(CONFIG)


def test_identity_config_leaves_out_the_machine_and_makes_paths_portable() -> None:
    record = {
        "config": {**CONFIG, "model": {**CONFIG["model"], "path": "/home/me/models/bert-ft/"}},
        "inputs": {"model.path": {"name": "bert-ft", "sha256": "ab" * 32}},
    }
    kept = identity.identity_config(record)
    assert "hardware" not in kept and "results_dir" not in kept and "launcher" not in kept
    assert kept["model"]["path"] == "bert-ft@" + "ab" * 8
    older = {"config": record["config"]}  # a record written before digests: the folder name only
    assert identity.identity_config(older)["model"]["path"] == "bert-ft"
    auto = {"config": {**CONFIG, "model": {**CONFIG["model"], "checkpoint": "auto"}}}
    assert identity.identity_config(auto)["model"]["checkpoint"] == "auto"


def test_the_same_checkpoint_in_two_places_is_one_model_and_two_checkpoints_are_two(tmp_path: Path) -> None:
    for place in ("a", "b", "c"):
        folder = tmp_path / place / "ckpt"
        folder.mkdir(parents=True)
        (folder / "config.json").write_text('{"hidden_size": 8}')
        (folder / "model.safetensors").write_bytes(b"weights-2" if place == "c" else b"weights-1")
        (folder / ".cache").mkdir()
        (folder / ".cache" / "junk").write_text(place)  # hidden: not part of the model

    def token(place: str) -> str:
        config = {**CONFIG, "model": {**CONFIG["model"], "path": str(tmp_path / place / "ckpt")}}
        record = {"config": config, "inputs": identity.portable_inputs(config)}
        return identity.identity_config(record)["model"]["path"]

    assert token("a") == token("b") != token("c")
    assert token("a").startswith("ckpt@")


def test_portable_inputs_skip_what_is_no_path(tmp_path: Path) -> None:
    data = tmp_path / "reviews.csv"
    data.write_text("text,label\nok,1\n")
    config = {
        **CONFIG,
        "dataset": {"name": "files", "path": str(data)},
        "model": {**CONFIG["model"], "checkpoint": "auto"},
        "scenario": {**CONFIG["scenario"], "teacher": str(tmp_path / "missing")},
    }
    found = identity.portable_inputs(config)
    assert set(found) == {"dataset.path"}
    assert found["dataset.path"]["name"] == "reviews.csv" and len(found["dataset.path"]["sha256"]) == 64


def test_flat_gives_dotted_leaves_with_lists_as_text() -> None:
    leaves = identity.flat({"backend": {"providers": ["CPU"], "threads": 0}, "empty": {}})
    assert leaves == {"backend.providers": '["CPU"]', "backend.threads": 0, "empty": "{}"}
    assert identity.key_of({"a": 1, "b": 2}) == identity.key_of({"b": 2, "a": 1})
