"""Records: schema validation, atomic writes, unique names."""

import json
import os

import jsonschema
import pytest

from harness import hardware, records


def make_record(**over):
    rec = {
        "schema": records.SCHEMA_ID,
        "run_id": records.new_run_id(),
        "created": records.now_iso(),
        "status": "ok",
        "reason": "",
        "scenario": {"name": "bert_fp32", "kind": "inference", "precision": "fp32", "batch_size": 8, "seq_len": 128},
        "backend": {"name": "onnxruntime", "version": "1.0", "device": "cpu"},
        "model": {"name": "bert_tiny", "params": 10},
        "hardware": hardware.describe(),
        "software": hardware.software(),
        "config": {},
        "metrics": {
            "latency_ms": {"p50": 1, "p90": 2, "p95": 3, "p99": 4, "mean": 2, "std": 1, "min": 1, "max": 4, "count": 10},
            "throughput": {"samples_per_s": 100.0},
        },
    }
    rec.update(over)
    return rec


def test_valid_record_round_trips(tmp_path):
    rec = make_record()
    path = records.write(rec, tmp_path)
    assert records.read(path) == json.loads(json.dumps(rec))
    assert path.name.endswith(f"{rec['run_id'][:8]}.json")
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]


def test_invalid_status_is_refused_and_nothing_is_written(tmp_path):
    with pytest.raises(jsonschema.ValidationError):
        records.write(make_record(status="great"), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_missing_contract_field_is_refused():
    rec = make_record()
    del rec["metrics"]["latency_ms"]["p99"]
    with pytest.raises(jsonschema.ValidationError):
        records.validate(rec)


def test_many_writes_give_distinct_files(tmp_path):
    paths = {records.write(make_record(), tmp_path) for _ in range(20)}
    assert len(paths) == 20


def test_hardware_fingerprint_is_stable_and_sensitive():
    a = hardware.fingerprint("cpu", 2, None)
    assert a == hardware.fingerprint("cpu", 2, None)
    assert a != hardware.fingerprint("cpu", 4, None)
    assert a != hardware.fingerprint("cpu", 2, {"name": "H200", "memory_mib": 143771})
