"""Accelerator backends on a machine that lacks their library or device, through the real CLI.

The run must end non-zero with the probe's precise reason on one line and leave an
``unavailable`` record, so a sweep over backends on a CPU box says what is missing
instead of crashing or measuring the CPU under an accelerator's name. Each case skips
where the library and device are present (then the backend's own tests run instead).
"""

from __future__ import annotations

import importlib.util

import pytest

from conftest import FAST, records_in, run_cli

from harness import records
from harness.errors import EXIT_CODES

pytestmark = pytest.mark.slow


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _ort_providers() -> list[str]:
    import onnxruntime

    return onnxruntime.get_available_providers()


def _case(backend: str, needle: str, present: bool, why_present: str):
    return pytest.param(backend, needle, marks=pytest.mark.skipif(present, reason=why_present), id=backend)


CASES = [
    _case(
        "torch_xla",
        "torch_xla not installed: it needs torch==2.9.0 in its own venv; run `make .venv-xla`",
        importlib.util.find_spec("torch_xla") is not None,
        "torch_xla is installed here (tests/test_xla.py covers it)",
    ),
    _case(
        "tensorrt",
        "tensorrt not installed" if importlib.util.find_spec("tensorrt") is None else "no CUDA device",
        importlib.util.find_spec("tensorrt") is not None and _cuda_available(),
        "tensorrt and a CUDA device are present (tests/test_tensorrt.py covers it)",
    ),
    _case("pytorch_cuda", "no CUDA device visible", _cuda_available(), "a CUDA device is present (tests/test_pytorch_cuda.py covers it)"),
    _case(
        "onnxruntime_cuda",
        "CUDAExecutionProvider",
        "CUDAExecutionProvider" in _ort_providers(),
        "onnxruntime-gpu with CUDAExecutionProvider is installed",
    ),
]


@pytest.mark.parametrize("scenario", ["bert_fp32", "bert_int8"])
@pytest.mark.parametrize("backend, needle", CASES)
def test_missing_library_or_device_is_an_unavailable_record(backend, needle, scenario, tmp_path):
    from harness.conf import __file__ as conf_init
    from pathlib import Path

    if not (Path(conf_init).parent / "scenario" / f"{scenario}.yaml").exists():
        pytest.skip(f"conf/scenario/{scenario}.yaml does not exist in this checkout")
    proc = run_cli(f"+scenario={scenario}", f"backend={backend}", *FAST, cwd=tmp_path)
    assert proc.returncode == EXIT_CODES["unavailable"], proc.stdout + proc.stderr
    assert needle in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    (rec,) = records_in(tmp_path / "results")
    records.validate(rec)
    assert rec["status"] == "unavailable"
    assert needle in rec["reason"] and "\n" not in rec["reason"]
    assert set(rec["metrics"]) <= {"stages", "wall_s", "outside_window_s"}  # where the time went; nothing measured
