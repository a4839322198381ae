"""The decoder export stage: a causal LM to ONNX with past-key-value inputs and outputs.

Same machinery and guarantees as :mod:`harness.export` (the canonical route, "exports to
ONNX"): the dynamo exporter, opset 18, one file cached under a content key of model
config + weights + export options + library versions, a cached file that fails
``onnx.checker`` rebuilt, and every export (fresh or cached) validated against eager
PyTorch before anything runs it. What differs is the graph's interface, the one ONNX
Runtime's and OpenVINO's decoders use:

inputs  ``input_ids (batch, seq)``, ``attention_mask (batch, past + seq)``,
        ``position_ids (batch, seq)``, ``past_key.<i>``/``past_value.<i>`` ``(batch, kv_heads, past, head_dim)``
outputs ``logits (batch, seq, vocab)``, ``present_key.<i>``/``present_value.<i>`` ``(batch, kv_heads, past + seq, head_dim)``

One graph serves prefill (``past = 0``) and every decode step (``seq = 1``). Validation
runs both: a prefill on two prompts, then one cached decode step fed with the
presents the graph itself returned; the max abs logit difference against the eager
model must stay within :data:`harness.export.TOLERANCE`.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from harness import cache
from harness.errors import HarnessError
from harness.export import OPSET, ExportResult, _summary, _versions, cached_export
from harness.generation.decoders import DecoderModel, KVLayout, kv_layout, positions

#: Above this many weight bytes the ONNX keeps its weights in an external-data file
#: beside it (protobuf caps one file at 2 GiB).
EXTERNAL_DATA_BYTES = 1_500_000_000


def io_names(layers: int) -> tuple[list[str], list[str]]:
    """Input and output names of the exported decoder with ``layers`` layers."""
    past = [f"past_{kind}.{i}" for i in range(layers) for kind in ("key", "value")]
    present = [f"present_{kind}.{i}" for i in range(layers) for kind in ("key", "value")]
    return ["input_ids", "attention_mask", "position_ids", *past], ["logits", *present]


def empty_past(layout: KVLayout, batch: int, dtype: Any = np.float32) -> list[np.ndarray]:
    """Zero-length past key/values (the prefill's), in input order."""
    return [np.zeros((batch, layout.kv_heads, 0, layout.head_dim), dtype=dtype) for _ in range(2 * layout.layers)]


def with_past(model: Any, layers: int, *, assign: bool = False) -> Any:
    """``model`` as ``(ids, mask, positions, flat past) -> (logits, *flat presents)``: the
    graph the ONNX export and OpenVINO's serving conversion trace.

    The cache is filled with ``DynamicCache.update``, or with ``assign`` by setting each
    layer's tensors directly: ``update`` on an empty layer concatenates onto a 1-D empty
    tensor, which OpenVINO's ``aten::cat`` rejects."""
    import torch
    from transformers import DynamicCache

    class DecoderWithPast(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, position_ids: Any, past: list[Any]) -> tuple[Any, ...]:
            kv = DynamicCache(config=self.model.config)
            for i in range(layers):
                keys, values = past[2 * i], past[2 * i + 1]
                if assign:
                    layer = kv.layers[i]
                    layer.lazy_initialization(keys, values)
                    layer.keys, layer.values = keys, values
                else:
                    kv.update(keys, values, i)
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=kv, use_cache=True)
            presents = [t for layer in kv.layers[:layers] for t in (layer.keys, layer.values)]
            return (out.logits, *presents)

    return DecoderWithPast().eval()


def _eager(wrapper: Any, feeds: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
    import torch

    tensors = [torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in names]
    with torch.inference_mode():
        out = wrapper(*tensors[:3], tensors[3:])
    return [t.float().numpy() for t in out]


def _validation_feeds(layout: KVLayout, vocab: int) -> dict[str, np.ndarray]:
    """A two-prompt prefill of 8 tokens (one left-padded by 3), empty past."""
    rng = np.random.default_rng(0)
    ids = rng.integers(1, min(vocab, 512), size=(2, 8)).astype(np.int64)
    mask = np.ones((2, 8), dtype=np.int64)
    mask[1, :3] = 0
    names = io_names(layout.layers)[0]
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions(mask, 8), **dict(zip(names[3:], empty_past(layout, 2)))}


def validate(path: Path, wrapper: Any, layout: KVLayout, vocab: int) -> float:
    """Max abs logit difference of ONNX Runtime vs eager over a prefill and one cached step."""
    import onnxruntime as ort

    inputs, _ = io_names(layout.layers)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = _validation_feeds(layout, vocab)
    diff = 0.0
    for _ in range(2):  # prefill, then a decode step on the graph's own presents
        got = session.run(None, feeds)
        want = _eager(wrapper, feeds, inputs)
        real = feeds["attention_mask"][:, -feeds["input_ids"].shape[1] :].astype(bool)
        diff = max(diff, float(np.max(np.abs(got[0] - want[0])[real])))  # padded rows' logits are unused
        step = got[0][:, -1].argmax(-1)[:, None].astype(np.int64)
        mask = np.concatenate([feeds["attention_mask"], np.ones((2, 1), dtype=np.int64)], axis=1)
        feeds = {"input_ids": step, "attention_mask": mask, "position_ids": positions(mask, 1), **dict(zip(inputs[3:], got[1:]))}
    return diff


def export_decoder(source: DecoderModel, on_status: Any = None) -> ExportResult:
    """Export ``source.module`` with past key/values to a cached, validated ONNX file."""
    layout = kv_layout(source.config)
    options = {"graph": "decoder-with-past/1", "opset": OPSET, "dynamic": True, "dynamo": True}
    versions = _versions()
    key = cache.content_key(source.config, source.weights_digest, options, versions)
    wrapper = with_past(source.module, layout.layers)
    external = source.params * 4 > EXTERNAL_DATA_BYTES
    return cached_export(
        key,
        source.cache_root,
        build=lambda path: _export(wrapper, layout, path, external=external),
        check=lambda path: validate(path, wrapper, layout, int(source.config["vocab_size"])),
        meta={"versions": versions, "options": options},
        label=f"{source.name} (with past key/values)",
        on_status=on_status,
    )


def _export(wrapper: Any, layout: KVLayout, path: Path, external: bool) -> None:
    """Export to ``path`` inside a staging folder (the caller publishes it)."""
    import torch

    inputs, outputs = io_names(layout.layers)
    batch, past_len, seq = 3, 5, 7  # distinct from every model dimension, so none is specialised
    Dim = torch.export.Dim
    b, s, p, t = Dim("batch", min=1, max=1024), Dim("seq", min=1, max=65536), Dim("past", min=0, max=65536), Dim("total", min=1, max=131072)
    example = (
        torch.randint(1, 100, (batch, seq)),
        torch.ones(batch, past_len + seq, dtype=torch.int64),
        torch.arange(past_len, past_len + seq).expand(batch, seq).contiguous(),
        [torch.randn(batch, layout.kv_heads, past_len, layout.head_dim) for _ in range(2 * layout.layers)],
    )
    shapes = ({0: b, 1: s}, {0: b, 1: t}, {0: b, 1: s}, [{0: b, 2: p} for _ in range(2 * layout.layers)])
    tmp = path.parent / f".tmp-{os.getpid()}.onnx"
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                example,
                str(tmp),
                dynamo=True,
                dynamic_shapes=shapes,
                input_names=inputs,
                output_names=outputs,
                opset_version=OPSET,
                external_data=external,
                optimize=True,
                verbose=False,
            )
        if external:  # the weights file is named after the graph file: rename both
            os.replace(f"{tmp}.data", f"{path}.data")
            import onnx

            model = onnx.load(str(tmp), load_external_data=False)
            for tensor in model.graph.initializer:
                for entry in tensor.external_data:
                    if entry.key == "location":
                        entry.value = f"{path.name}.data"
            onnx.save(model, str(tmp))
        os.replace(tmp, path)
    except Exception as exc:
        raise HarnessError(
            f"ONNX export of the decoder failed: {_summary(exc)}",
            "run with HYDRA_FULL_ERROR=1 for the traceback",
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)
        Path(f"{tmp}.data").unlink(missing_ok=True)
