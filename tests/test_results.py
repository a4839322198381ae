"""The results loader: folders, globs, flattening, machines, and bad files skipped by name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from harness import hardware, records, results

XEON = "Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz"


def make_record(
    *,
    model: str = "tiny-bert",
    scenario: str = "bert_fp32",
    kind: str = "inference",
    precision: str = "fp32",
    backend: str = "onnxruntime",
    device: str = "cpu",
    label: str | None = None,
    cpu: str = XEON,
    cores: int = 16,
    accelerator: dict[str, Any] | None = None,
    status: str = "ok",
    reason: str = "",
    throughput: float | None = 100.0,
    p50: float = 10.0,
    p99: float = 12.0,
    samples: list[float] | None = None,
    accuracy: float | None = None,
    reference: float | None = None,
    size_bytes: int | None = 4 * 2**20,
    mfu: float | None = None,
    loss_curve: list[list[float]] | None = None,
    world_size: int | None = None,
    batch_size: int = 1,
    seq_len: int | None = 128,
) -> dict[str, Any]:
    """A schema-valid record with the fields a report reads; validated before it is returned."""
    metrics: dict[str, Any] = {}
    if status in ("ok", "mismatch"):
        samples = samples if samples is not None else [p50 * 0.9, p50, p50, p50 * 1.05, p99]
        metrics["latency_ms"] = {
            "p50": p50,
            "p90": p99,
            "p95": p99,
            "p99": p99,
            "mean": p50,
            "std": 0.5,
            "min": min(samples),
            "max": max(samples),
            "count": len(samples),
            "samples": samples,
        }
        if throughput is not None:
            metrics["throughput"] = {"samples_per_s": throughput, "tokens_per_s": None}
        if accuracy is not None:
            metrics["accuracy"] = {
                "metric": "top1",
                "value": accuracy,
                "reference": reference,
                "relative": accuracy / reference if reference else None,
                "agreement": 1.0,
            }
        if mfu is not None:
            metrics["mfu"] = mfu
        training = {"loss_curve": loss_curve, "world_size": world_size}
        if any(value is not None for value in training.values()):
            metrics["training"] = {key: value for key, value in training.items() if value is not None}
    record = {
        "schema": records.SCHEMA_ID,
        "run_id": records.new_run_id(),
        "created": records.now_iso(),
        "status": status,
        "reason": reason,
        "scenario": {"name": scenario, "kind": kind, "precision": precision, "batch_size": batch_size, "seq_len": seq_len},
        "backend": {"name": backend, "version": "1.0", "device": device, "plugin": None},
        "model": {"name": model, "params": 1000, "source": "config", "size_bytes": size_bytes},
        "hardware": {
            "cpu_model": cpu,
            "cores": cores,
            "accelerator": accelerator,
            "label": label,
            "fingerprint": hardware.fingerprint(cpu, cores, accelerator),
        },
        "software": {"python": "3.11"},
        "plugins": [{"name": backend, "version": "1.0"}],
        "config": {"backend": {"name": backend, "threads": 4}, "scenario": {"name": scenario}},
        "metrics": metrics,
    }
    records.validate(record)
    return record


def write(folder: Path, **fields: Any) -> Path:
    return records.write(make_record(**fields), folder)


def test_folders_are_read_recursively_and_temp_files_ignored(tmp_path: Path) -> None:
    write(tmp_path / "a", backend="onnxruntime")
    write(tmp_path / "a" / "deep" / "er", backend="openvino")
    (tmp_path / "a" / ".tmp-half.json").write_text('{"schema": "harness.rec')
    frame = results.load(tmp_path / "a")
    assert sorted(frame["backend.name"]) == ["onnxruntime", "openvino"]
    assert all(Path(path).is_file() for path in frame["path"])


def test_many_folders_and_globs_each_file_once(tmp_path: Path) -> None:
    first = write(tmp_path / "m1" / "results", backend="onnxruntime", label="m1")
    write(tmp_path / "m2" / "results", backend="tensorrt", label="m2")
    frame = results.load(tmp_path / "m1", str(tmp_path / "*" / "results"), first)
    assert sorted(frame["machine"]) == ["m1", "m2"]
    only_json = results.load(str(tmp_path / "**" / "*.json"))
    assert len(only_json) == 2


def test_missing_path_and_empty_glob_raise(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="path not found"):
        results.load(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no files match"):
        results.load(str(tmp_path / "*.json"))


def test_malformed_records_are_skipped_with_a_warning_naming_them(tmp_path: Path) -> None:
    good = write(tmp_path)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    invalid = make_record()
    invalid["metrics"]["latency_ms"]["p50"] = -1
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(invalid))
    with pytest.warns(results.MalformedRecordWarning) as caught:
        frame = results.load(tmp_path)
    assert list(frame["path"]) == [str(good.resolve())]
    messages = sorted(str(warning.message) for warning in caught)
    assert str(broken.resolve()) in messages[0] and "invalid JSON" in messages[0]
    assert str(wrong.resolve()) in messages[1]
    assert "metrics.latency_ms.p50" in messages[1] and "minimum" in messages[1]


def test_collect_returns_skipped_files_instead_of_warning(tmp_path: Path) -> None:
    (tmp_path / "not-a-record.json").write_text("[1, 2]")
    loaded = results.collect(tmp_path)
    assert loaded.frame.empty
    assert [skipped.path.name for skipped in loaded.skipped] == ["not-a-record.json"]
    assert "schema violation" in loaded.skipped[0].problem


def test_a_copied_record_is_loaded_once(tmp_path: Path) -> None:
    original = write(tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / original.name).write_text(original.read_text())
    loaded = results.collect(tmp_path)
    assert len(loaded.frame) == 1
    assert "duplicate" in loaded.skipped[0].problem


def test_records_are_flattened_into_dotted_columns_without_raw_arrays(tmp_path: Path) -> None:
    write(
        tmp_path,
        accelerator={"name": "NVIDIA H200", "memory_mib": 143771, "driver": "570"},
        accuracy=0.9,
        reference=0.92,
        mfu=0.41,
        samples=[1.0, 2.0, 3.0],
        loss_curve=[[0, 2.0], [10, 1.0]],
    )
    write(tmp_path, backend="openvino")  # accelerator null, no accuracy
    frame = results.load(tmp_path).sort_values("backend.name").reset_index(drop=True)
    row = frame.iloc[0]
    assert row["metrics.latency_ms.p50"] == 10.0
    assert row["metrics.throughput.samples_per_s"] == 100.0
    assert row["hardware.cpu_model"] == XEON
    assert row["hardware.accelerator.name"] == "NVIDIA H200"
    assert row["metrics.accuracy.relative"] == pytest.approx(0.9 / 0.92)
    assert row["metrics.mfu"] == 0.41
    assert row["config.backend.threads"] == 4
    assert pd.isna(frame.loc[1, "hardware.accelerator.name"])
    assert not any(column.endswith(("samples", "loss_curve")) or column == "plugins" for column in frame.columns)
    assert frame.columns[-1] == "path"
    assert str(frame["created"].dtype).startswith("datetime64")


def test_raw_arrays_are_fetched_from_the_record_files(tmp_path: Path) -> None:
    write(tmp_path, samples=[1.0, 2.0, 3.0], loss_curve=[[0, 2.0], [10, 1.0]])
    write(tmp_path, backend="openvino", samples=[5.0])
    frame = results.load(tmp_path).sort_values("backend.name")
    assert list(results.raw(frame, "metrics.latency_ms.samples")) == [[1.0, 2.0, 3.0], [5.0]]
    assert list(results.raw(frame, "metrics.training.loss_curve")) == [[[0, 2.0], [10, 1.0]], None]
    first = frame.iloc[0]
    assert results.record_for(frame, first["run_id"])["metrics"]["latency_ms"]["samples"] == [1.0, 2.0, 3.0]


def test_machine_is_the_label_or_a_short_hardware_name(tmp_path: Path) -> None:
    write(tmp_path, label="lab-box")
    write(tmp_path, backend="tensorrt", accelerator={"name": "NVIDIA H200"})
    write(tmp_path, backend="openvino", cpu="AMD EPYC 7B13 64-Core Processor", cores=8)
    machines = set(results.load(tmp_path)["machine"])
    assert machines == {"lab-box", "Intel Xeon Platinum 8480+ 16c + NVIDIA H200", "AMD EPYC 7B13 8c"}


def test_machines_with_the_same_short_name_but_different_fingerprints_stay_apart() -> None:
    frame = pd.DataFrame(
        {
            "hardware.cpu_model": ["X", "X"],
            "hardware.cores": [4, 4],
            "hardware.accelerator.name": ["GPU", "GPU"],
            "hardware.fingerprint": ["aaaaaa111", "bbbbbb222"],
            "hardware.label": [None, None],
        }
    )
    assert list(results.machine_names(frame)) == ["X 4c + GPU #aaaaaa", "X 4c + GPU #bbbbbb"]


def test_world_size_is_the_training_process_count_else_one(tmp_path: Path) -> None:
    write(tmp_path, backend="onnxruntime")  # inference: one process
    write(tmp_path, backend="openvino", kind="training", loss_curve=[[0, 2.0]])  # older training record, no world size
    write(tmp_path, backend="pytorch", kind="training", loss_curve=[[0, 2.0]], world_size=2)
    frame = results.load(tmp_path).sort_values("backend.name")
    assert frame["world_size"].tolist() == [1, 1, 2]
    assert frame["world_size"].dtype == "int64"


def test_no_records_gives_an_empty_frame_with_the_core_columns(tmp_path: Path) -> None:
    frame = results.load(tmp_path)
    assert frame.empty
    assert {"machine", "world_size", "path", "metrics.throughput.samples_per_s"} <= set(frame.columns)
