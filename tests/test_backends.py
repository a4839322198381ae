"""Built-in backends: probe, prepare, outputs equal to eager, sessions reusable."""

import numpy as np
import pytest

from harness.backend import Artifact
from harness.errors import Unsupported
from harness.export import eager_outputs, export_onnx
from harness.plugins import load_plugins

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def registry():
    return load_plugins().registry


def _session(registry, name, tiny_model, tiny_batch, tmp_path_factory, **options):
    from harness.config import typed

    backend_cls = registry.backend(name)
    opts = typed(backend_cls.options_type, options, "backend")
    assert backend_cls.probe(opts).available
    backend = backend_cls(opts)
    artifact = Artifact(tiny_model.name, tiny_model.input_names, tiny_model.output_names, module=tiny_model.module)
    if "onnx" in backend.capabilities().consumes:
        artifact.onnx_path = export_onnx(tiny_model, tiny_batch, str(tmp_path_factory.mktemp("c"))).path
    return backend, backend.prepare(artifact, "fp32")


@pytest.mark.parametrize("name, options", [("onnxruntime", {}), ("onnxruntime", {"intra_op_threads": 1, "graph_optimization_level": "basic"}), ("pytorch", {})])
def test_outputs_match_eager_and_session_is_reusable(registry, name, options, tiny_model, tiny_batch, tmp_path_factory):
    backend, session = _session(registry, name, tiny_model, tiny_batch, tmp_path_factory, **options)
    reference = eager_outputs(tiny_model, tiny_batch)
    inputs = session.load(tiny_batch)
    for _ in range(3):
        got = session.fetch(session.run(inputs))["logits"]
        assert np.max(np.abs(got - reference)) < backend.capabilities().tolerance["fp32"]


@pytest.mark.parametrize("name", ["onnxruntime", "pytorch"])
def test_undeclared_precision_is_unsupported(registry, name):
    from harness.config import typed

    backend_cls = registry.backend(name)
    backend = backend_cls(typed(backend_cls.options_type, {}, "backend"))
    with pytest.raises(Unsupported):
        backend.check_precision("fp8")


def test_pytorch_cuda_probe_explains_missing_gpu(registry):
    import torch

    from harness.config import typed

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    backend_cls = registry.backend("pytorch")
    availability = backend_cls.probe(typed(backend_cls.options_type, {"device": "cuda"}, "backend"))
    assert not availability.available and "CUDA" in availability.reason


def test_missing_onnxruntime_provider_is_unavailable(registry):
    from harness.config import typed

    backend_cls = registry.backend("onnxruntime")
    availability = backend_cls.probe(typed(backend_cls.options_type, {"providers": ["NoSuchExecutionProvider"]}, "backend"))
    assert not availability.available and "NoSuchExecutionProvider" in availability.reason
