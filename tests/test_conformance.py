"""The conformance kit (harness.testing) run against every built-in backend, and the kit's own teeth.

Backends that are registered but cannot run here (TensorRT without a GPU) still have their
probe and their ``unavailable`` record checked; the rest of their checks skip with the
probe's reason. Backends whose module does not register one yet (a placeholder) are
skipped with that reason.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from harness.plugins import load_plugins
from harness.testing import BackendConformance, GenerationConformance

pytestmark = pytest.mark.slow

_REGISTERED = set(load_plugins().registry.backends)


def _registered(name: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(name not in _REGISTERED, reason=f"no plugin registers a '{name}' backend yet (its module registers nothing)")


class TestOnnxRuntime(BackendConformance):
    backend = "onnxruntime"


class TestOnnxRuntimeBasicOptimizations(BackendConformance):
    """A non-default configuration must keep the promises too."""

    backend = "onnxruntime"
    overrides = ("backend.intra_op_threads=1", "backend.graph_optimization_level=basic")
    image = False


class TestPyTorch(BackendConformance):
    backend = "pytorch"


@_registered("openvino")
class TestOpenVINO(BackendConformance):
    backend = "openvino"


@_registered("torch_xla")
class TestTorchXla(BackendConformance):
    backend = "torch_xla"


@pytest.mark.llamacpp
class TestLlamaCppGeneration(GenerationConformance):
    """llama.cpp runs decoder LLMs only (GGUF), so it takes the generation tier alone."""

    backend = "llamacpp"
    overrides = ("backend.threads=2",)


class TestTensorRT(BackendConformance):
    backend = "tensorrt"

    def test_unavailable_here_says_why(self, harness_probe) -> None:
        """On a machine without TensorRT or a GPU the probe names what is missing."""
        if not isinstance(harness_probe, Exception) and harness_probe.available:
            pytest.skip("TensorRT and a GPU are present here")
        assert not isinstance(harness_probe, Exception)
        assert "tensorrt" in harness_probe.reason.lower() or "cuda" in harness_probe.reason.lower(), harness_probe.reason


class TestPyTorchCuda(BackendConformance):
    """``backend.device=cuda``: the whole kit on a GPU; without one, ``unavailable`` with the
    reason in the record (the rest skips with it)."""

    backend = "pytorch"
    overrides = ("backend.device=cuda",)
    image = False


# --- the kit must fail a backend that breaks the contract ------------------------------

LIAR_PLUGIN = '''
"""A backend that breaks the contract on purpose: wrong outputs, ignores precision."""
from pathlib import Path

from harness.backends.onnxruntime import OnnxRuntimeBackend, OnnxRuntimeSession
from harness.hookspecs import hookimpl

HARNESS_PLUGIN_API = "1"


class LyingSession(OnnxRuntimeSession):
    def fetch(self, outputs):
        return {name: value + 0.5 for name, value in super().fetch(outputs).items()}


class LiarBackend(OnnxRuntimeBackend):
    name = "liar"

    def prepare(self, artifact, precision):  # no check_precision: accepts anything
        import onnxruntime as ort

        session = ort.InferenceSession(str(artifact.onnx_path), providers=["CPUExecutionProvider"])
        return LyingSession(session, [o.name for o in session.get_outputs()], "cpu")


@hookimpl
def harness_register_backends(registry):
    registry.add_backend(LiarBackend)


@hookimpl
def harness_config_searchpath():
    return [(Path(__file__).parent / "liar_conf").as_uri()]
'''


def _pytest_plugin_args() -> list[str]:
    """``-p harness.testing`` unless the pytest11 entry point already loads it."""
    installed = any(ep.value == "harness.testing" for ep in entry_points(group="pytest11"))
    return [] if installed else ["-p", "harness.testing"]


def test_kit_fails_a_backend_that_lies(tmp_path: Path) -> None:
    """Run ``pytest --pyargs harness.testing --harness-backend=liar`` as a vendor would."""
    (tmp_path / "liar_plugin.py").write_text(LIAR_PLUGIN)
    (tmp_path / "liar_conf" / "backend").mkdir(parents=True)
    (tmp_path / "liar_conf" / "backend" / "liar.yaml").write_text("name: liar\n")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
        "HARNESS_PLUGINS": "liar_plugin",
    }
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        *_pytest_plugin_args(),
        "--pyargs",
        "harness.testing",
        "--harness-backend=liar",
        "-q",
        "-rfEs",
        "-k",
        "probe or precision or full_run",
        "-o",
        "addopts=",
    ]
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    failed = {line.split("::")[-1].split(" ")[0] for line in out.splitlines() if line.startswith("FAILED")}
    assert "test_precision[liar-fp32]" in failed, out  # outputs off by 0.5
    assert "test_precision[liar-fp16]" in failed, out  # undeclared precision not refused
    assert "test_full_run_writes_a_valid_record[liar]" in failed, out  # recorded as mismatch
    assert not any("probe" in name for name in failed), out


def test_command_line_kit_without_a_backend_skips_with_the_fix(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *_pytest_plugin_args(), "--pyargs", "harness.testing", "-q", "-rs", "-o", "addopts="]
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "--harness-backend=<name>" in proc.stdout


def test_kit_documents_every_check() -> None:
    """Each test of the kit is named in docs/plugins.md, so a vendor knows what it checks."""
    docs = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text()
    checks = [name for name in dir(BackendConformance) if name.startswith("test_")]
    assert checks
    missing = [name for name in checks if name not in docs]
    assert not missing, f"docs/plugins.md does not describe: {missing}"
