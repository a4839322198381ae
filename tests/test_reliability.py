"""The issue's acceptance runs, record atomicity, and the safety rules of the code base.

- ``harness -m backend=segfault,onnxruntime +scenario=bert_fp32``: two records, the
  crash named, the good run measured, a non-zero exit, bounded by the timeout;
- a hanging backend is killed at the timeout and recorded ``timeout``;
- a record is never half-written;
- weights are only read through safetensors or ``torch.load(weights_only=True)`` and
  nothing reaches the Hugging Face Hub (checked on the source, so a new module
  cannot quietly break the rule).
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from conftest import FAST, records_in, run_cli

from harness import records

ROOT = Path(__file__).resolve().parents[1]
FAULTS = {
    "HARNESS_PLUGINS": "faultplugins.faulty",
    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "tests"), os.environ.get("PYTHONPATH")])),
}


@pytest.mark.slow
def test_segfaulting_backend_beside_a_good_one(tmp_path):
    proc = run_cli("-m", "backend=segfault,onnxruntime", "+scenario=bert_fp32", *FAST, "++launcher.timeout_s=300", cwd=tmp_path, env=FAULTS)
    assert proc.returncode != 0
    recs = {r["backend"]["name"]: r for r in records_in(tmp_path / "results")}
    assert set(recs) == {"segfault", "onnxruntime"}
    crashed, good = recs["segfault"], recs["onnxruntime"]
    assert crashed["status"] == "failed" and "SIGSEGV" in crashed["reason"]
    assert crashed["launcher"]["wall_s"] < 300
    assert good["status"] == "ok" and good["metrics"]["latency_ms"]["p50"] > 0
    for rec in recs.values():
        records.validate(rec)
    assert "sweep: 2 jobs: 1 ok, 1 failed" in proc.stdout


@pytest.mark.slow
def test_hanging_backend_is_killed_at_the_timeout(tmp_path):
    proc = run_cli("backend=hang", "+scenario=bert_fp32", *FAST, "++launcher.timeout_s=20", cwd=tmp_path, env=FAULTS)
    assert proc.returncode == 6
    (rec,) = records_in(tmp_path / "results")
    assert rec["status"] == "timeout" and "launcher.timeout_s=20" in rec["reason"]
    assert 20 <= rec["launcher"]["wall_s"] <= 20 + 15
    assert rec["error"]["stderr_tail"]


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
    from test_records import make_record

    def power_cut(fd):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "fsync", power_cut)
    with pytest.raises(OSError):
        records.write(make_record(), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_an_invalid_record_is_never_written(tmp_path):
    from test_records import make_record

    with pytest.raises(Exception):
        records.write(make_record(status="great"), tmp_path)
    assert list(tmp_path.iterdir()) == []


# --- safety rules, checked on the source -------------------------------------------------------------

SOURCE_DIRS = ("harness", "backends", "scenarios", "benchmarks", "examples", "scripts")


def _calls(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def _kw(node: ast.Call, name: str):
    for keyword in node.keywords:
        if keyword.arg == name:
            return ast.unparse(keyword.value)
    return None


def unsafe_calls(path: Path) -> list[str]:
    """Every call in ``path`` that could unpickle weights or reach the Hub."""
    found = []
    for node, func in _calls(path):
        label = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
        where = f"{label}:{node.lineno}: {func}"
        name = func.rsplit(".", 1)[-1]
        if func in ("torch.load",) and _kw(node, "weights_only") != "True":
            found.append(f"{where} without weights_only=True")
        elif func in ("pickle.load", "pickle.loads", "joblib.load", "dill.load", "cloudpickle.load", "torch.hub.load"):
            found.append(where)
        elif _kw(node, "allow_pickle") == "True":
            found.append(f"{where} with allow_pickle=True")
        elif name == "from_pretrained" and _kw(node, "local_files_only") != "True":
            found.append(f"{where} without local_files_only=True")
        elif name in ("hf_hub_download", "snapshot_download", "load_state_dict_from_url", "download_url_to_file"):
            found.append(where)
    return found


def test_rule_checker_catches_unsafe_calls(tmp_path):
    bad = tmp_path / "unsafe_example.py"
    bad.write_text(
        "import torch, pickle, numpy as np\n"
        "torch.load('w.pt')\n"
        "torch.load('w.pt', weights_only=True)\n"
        "pickle.loads(b'')\n"
        "np.load('x.npy', allow_pickle=True)\n"
        "AutoModel.from_pretrained('bert-base-uncased')\n"
        "AutoModel.from_pretrained(folder, local_files_only=True)\n"
    )
    assert [line.split(": ", 1)[0].rsplit(":", 1)[1] for line in unsafe_calls(bad)] == ["2", "4", "5", "6"]


def test_weights_only_through_safe_loaders_and_never_from_the_hub():
    offenders = []
    for folder in SOURCE_DIRS:
        for path in sorted((ROOT / folder).rglob("*.py")) if (ROOT / folder).is_dir() else []:
            offenders += unsafe_calls(path)
    assert offenders == [], "unsafe loading (fix: safetensors, torch.load(..., weights_only=True), local_files_only=True):\n" + "\n".join(offenders)
