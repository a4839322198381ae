"""ONNX export stage: dynamic axes, one file, cache reuse, corrupt-cache rebuild, validation."""

import numpy as np
import onnx
import pytest

from harness.export import eager_outputs, export_onnx, onnx_outputs

pytestmark = pytest.mark.slow


def test_export_is_self_contained_and_dynamic(tiny_model, tiny_batch, tmp_path):
    result = export_onnx(tiny_model, tiny_batch, str(tmp_path))
    assert not result.cached and result.max_abs_diff <= 1e-3 and result.seconds > 0
    assert [p.name for p in result.path.parent.iterdir() if p.suffix == ".data"] == []
    model = onnx.load(str(result.path))
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert all(isinstance(v, str) and v for v in dims["input_ids"]), dims
    # other batch and sequence sizes run and match eager
    rng = np.random.default_rng(1)
    other = {"input_ids": rng.integers(5, 900, size=(5, 40)).astype(np.int64), "attention_mask": np.ones((5, 40), np.int64)}
    assert np.max(np.abs(onnx_outputs(result.path, other, tiny_model.input_names) - eager_outputs(tiny_model, other))) < 1e-3


def test_second_export_reuses_the_cache(tiny_model, tiny_batch, tmp_path):
    first = export_onnx(tiny_model, tiny_batch, str(tmp_path))
    second = export_onnx(tiny_model, tiny_batch, str(tmp_path))
    assert second.cached and second.path == first.path and second.key == first.key


def test_corrupt_cached_file_is_rebuilt_not_trusted(tiny_model, tiny_batch, tmp_path):
    first = export_onnx(tiny_model, tiny_batch, str(tmp_path))
    first.path.write_bytes(b"not an onnx model")
    again = export_onnx(tiny_model, tiny_batch, str(tmp_path))
    assert not again.cached and again.max_abs_diff <= 1e-3
    onnx.checker.check_model(str(again.path))


def test_changed_weights_change_the_key(tiny_model, tiny_batch, tmp_path):
    import torch

    first = export_onnx(tiny_model, tiny_batch, str(tmp_path))
    param = next(tiny_model.module.parameters())
    with torch.no_grad():
        param.add_(0.01)
    try:
        second = export_onnx(tiny_model, tiny_batch, str(tmp_path))
        assert second.key != first.key
    finally:
        with torch.no_grad():
            param.sub_(0.01)
