"""Facts the TensorRT backend reads from an ONNX file before building an engine.

Q/DQ nodes and their zero points decide whether an INT8 engine is possible, the
initializers' float type decides whether fp16/bf16 needs a conversion first, the graph
inputs' static dims shape the optimization profile, and the hash over the file and its
external weights keys the engine cache. Only the graph structure is loaded
(``load_external_data=False``); ``onnx`` is imported inside the functions.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

_QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def _load_onnx_structure(path: str | os.PathLike[str]) -> Any:
    import onnx

    return onnx.load(os.fspath(path), load_external_data=False)


def _all_nodes(model: Any) -> list[Any]:
    """Every node of the model: main graph, nested subgraphs (If/Loop/Scan) and functions."""
    import onnx

    nodes: list[Any] = []
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            nodes.append(node)
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    graphs.append(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    graphs.extend(attr.graphs)
    for function in model.functions:
        nodes.extend(function.node)
    return nodes


def onnx_has_qdq(path: str | os.PathLike[str]) -> bool:
    """True when the ONNX has standard-domain QuantizeLinear/DequantizeLinear nodes.

    Only the default ONNX domain counts: ``com.microsoft`` contrib Q/DQ (from ORT's
    ``use_qdq_contrib_ops``) is not parsed by TensorRT.
    """
    model = _load_onnx_structure(path)
    return any(n.op_type in _QDQ_OPS and n.domain in ("", "ai.onnx") for n in _all_nodes(model))


def qdq_problem(path: str | os.PathLike[str]) -> str | None:
    """Why TensorRT would reject this Q/DQ ONNX, or None.

    TensorRT supports symmetric quantization only: zero points must be all zeros and
    of a signed type (int8). An ORT recipe run with asymmetric uint8 activations parses
    fine in ONNX but fails in TensorRT's parser with an assertion; this says so first.
    """
    import onnx
    from onnx import numpy_helper

    model = _load_onnx_structure(path)
    inits = {t.name: t for t in model.graph.initializer}
    for node in _all_nodes(model):
        if node.op_type not in _QDQ_OPS or len(node.input) < 3 or not node.input[2]:
            continue
        zp = inits.get(node.input[2])
        if zp is None:
            continue
        label = node.name or node.output[0]
        if zp.data_type == onnx.TensorProto.UINT8:
            return f"{node.op_type} '{label}' has a uint8 zero point; tensorrt needs symmetric int8 Q/DQ"
        if zp.data_location == onnx.TensorProto.EXTERNAL:
            continue
        if np.any(numpy_helper.to_array(zp) != 0):
            return f"{node.op_type} '{label}' has a nonzero zero point; tensorrt needs symmetric Q/DQ"
    return None


_FLOAT_TYPES = {1: "fp32", 10: "fp16", 16: "bf16"}  # onnx.TensorProto FLOAT, FLOAT16, BFLOAT16


def onnx_float_type(path: str | os.PathLike[str]) -> str:
    """The ONNX's compute float type: "fp16"/"bf16" if its float weights use it, else "fp32".

    Counted over initializer elements, so a mixed-precision ONNX from AutoCast with
    fp32 I/O (``keep_io_types``) still reads as fp16. When both low-precision types
    occur, the one with more elements wins.
    """
    model = _load_onnx_structure(path)
    counts = {"fp32": 0, "fp16": 0, "bf16": 0}
    for tensor in model.graph.initializer:
        kind = _FLOAT_TYPES.get(tensor.data_type)
        if kind:
            counts[kind] += int(np.prod(tensor.dims)) if len(tensor.dims) else 1
    if counts["fp16"] or counts["bf16"]:
        return "fp16" if counts["fp16"] >= counts["bf16"] else "bf16"
    return "fp32"


def onnx_input_dims(path: str | os.PathLike[str]) -> dict[str, tuple[int | None, ...]]:
    """Graph inputs (initializers excluded) with static dims as ints, dynamic ones as None."""
    model = _load_onnx_structure(path)
    inits = {t.name for t in model.graph.initializer}
    dims: dict[str, tuple[int | None, ...]] = {}
    for value in model.graph.input:
        if value.name in inits:
            continue
        shape = value.type.tensor_type.shape
        dims[value.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in shape.dim)
    return dims


def onnx_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 over the ONNX file and every external-data file it references.

    External weights must count: changing them does not change the ``.onnx`` bytes,
    and an engine cached on the ``.onnx`` alone would then be stale.
    """
    path = Path(path)
    digest = hashlib.sha256()
    files = [path]
    model = _load_onnx_structure(path)
    locations: set[str] = set()
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                locations.add(entry.value)
    files.extend(path.parent / loc for loc in sorted(locations))
    for file in files:
        digest.update(file.name.encode() + b"\x00")
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()
