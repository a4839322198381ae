"""ONNX-level recipes with ONNX Runtime's own tools: dynamic int8, static QDQ int8, fp16.

Plain functions from one ONNX file to another, so any backend that consumes ONNX can
reuse them: the ``onnxruntime`` backend runs the results itself; a TensorRT backend
consumes :func:`quantize_qdq` (symmetric int8, zero points 0, standard-domain Q/DQ,
no int32 bias Q/DQ), which its ``qdq_problem`` check accepts.

Each function works inside a temporary folder beside the output: ``quant_pre_process``
and the calibrators write intermediate models (older ORT releases wrote
``augmented_model.onnx`` into the current directory), and the output is moved into
place only when complete. Each returns the details the record keeps.
"""

from __future__ import annotations

import os
import platform
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from harness.compression.recipes import Recipe, WeightRecipe
from harness.errors import HarnessError, Unsupported

#: Ops quantized in transformers by the static recipes. Quantizing only the matmuls
#: keeps Softmax / LayerNorm / GELU in float, which is where int8 loses BERT accuracy.
TRANSFORMER_STATIC_OPS = ("MatMul", "Gemm")


@contextmanager
def _staging(dst: Path) -> Iterator[Path]:
    """A scratch folder beside ``dst`` that is the working directory while ORT runs."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".ort-quant-", dir=dst.parent) as tmp:
        previous = os.getcwd()
        os.chdir(tmp)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                yield Path(tmp)
        finally:
            os.chdir(previous)


def _input_names(path: Path) -> set[str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {i.name for i in model.graph.initializer}
    return {i.name for i in model.graph.input if i.name not in initializers}


def preprocess(src: Path, dst: Path) -> dict[str, Any]:
    """ORT's recommended pre-processing: symbolic shape inference plus graph optimisation.

    ``auto_merge`` lets symbolic inference unify the batch/sequence symbols the dynamo
    exporter leaves on intermediate tensors; without it inference stops half-way on
    exported BERT graphs ("Incomplete symbolic shape inference").
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst), skip_optimization=False, auto_merge=True)
    except Exception as exc:  # shape inference has gaps for some exported graphs
        raise HarnessError(
            f"onnxruntime quantization pre-processing failed on {src.name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
            "report the model config; pre-processing is needed for correct quantization",
        ) from exc
    return {"preprocess": "quant_pre_process(auto_merge=True)"}


def static_activation_type() -> str:
    """``uint8`` (U8S8) on x86-64, ``int8`` (S8S8) elsewhere.

    ORT's QDQ guidance makes S8S8 the general default, but on x86-64 its int8 kernels
    use VPMADDUBSW/VNNI, which multiply unsigned by signed bytes: measured here on a
    small ResNet, S8S8 QDQ ran ~8x slower than U8S8 (and slower than fp32), while U8S8
    matched fp32. ARM kernels prefer S8S8.
    """
    return "uint8" if platform.machine().lower() in ("x86_64", "amd64", "i686", "x86") else "int8"


class _Reader:
    """A ``CalibrationDataReader`` over real calibration batches (inputs the model has)."""

    def __init__(self, batches: Sequence[dict[str, np.ndarray]], names: set[str]) -> None:
        self._batches = [{k: v for k, v in b.items() if k in names} for b in batches]
        self._iter = iter(self._batches)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = iter(self._batches)


def quantize_dynamic(src: Path, dst: Path, per_channel: bool = False) -> dict[str, Any]:
    """int8 weights, activations quantized per call (``quantize_dynamic``, S8 weights)."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    src, dst = Path(src), Path(dst)
    with _staging(dst) as tmp:
        pre = tmp / "pre.onnx"
        details = preprocess(src, pre)
        out = tmp / "out.onnx"
        ort_quantize_dynamic(str(pre), str(out), per_channel=per_channel, weight_type=QuantType.QInt8)
        os.replace(out, dst)
    return {
        **details,
        "tool": "onnxruntime.quantization.quantize_dynamic",
        "weights": "int8 (symmetric)",
        "activations": "uint8, per call",
        "per_channel": per_channel,
        "calibrated": False,
    }


def quantize_static(
    src: Path,
    dst: Path,
    batches: Sequence[dict[str, np.ndarray]],
    method: str = "default",
    per_channel: bool = False,
    symmetric: bool = False,
    model_type: str = "transformer",
) -> dict[str, Any]:
    """Static int8 QDQ calibrated on ``batches``: int8 weights, activations in
    :func:`static_activation_type` (asymmetric).

    ``symmetric`` instead makes activations int8 with zero points 0 (as the weights) and
    keeps biases in float (no int32 Q/DQ): the explicit-quantization form TensorRT accepts.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    if not batches:
        raise HarnessError("static quantization needs calibration samples and got none", "set scenario.quantization.calibration_samples >= 1")
    src, dst = Path(src), Path(dst)
    method = "MinMax" if method == "default" else method
    activations = "int8" if symmetric else static_activation_type()
    extra: dict[str, Any] = {"ActivationSymmetric": symmetric, "WeightSymmetric": True}
    if symmetric:
        extra["QuantizeBias"] = False
    ops = list(TRANSFORMER_STATIC_OPS) if model_type == "transformer" else None
    with _staging(dst) as tmp:
        pre = tmp / "pre.onnx"
        details = preprocess(src, pre)
        out = tmp / "out.onnx"
        ort_quantize_static(
            str(pre),
            str(out),
            _Reader(batches, _input_names(pre)),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=ops,
            per_channel=per_channel,
            activation_type=QuantType.QInt8 if activations == "int8" else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, method),
            extra_options=extra,
        )
        os.replace(out, dst)
    return {
        **details,
        "tool": "onnxruntime.quantization.quantize_static",
        "format": "QDQ",
        "weights": "int8 (symmetric)",
        "activations": f"{activations} ({'symmetric' if symmetric else 'asymmetric'})",
        "per_channel": per_channel,
        "method": method,
        "op_types": ops or "all supported",
        "calibrated": True,
        "calibration_samples": int(sum(len(next(iter(b.values()))) for b in batches)),
    }


def quantize_qdq(
    src: Path, dst: Path, batches: Sequence[dict[str, np.ndarray]], method: str = "default", per_channel: bool = True, model_type: str = "transformer"
) -> dict[str, Any]:
    """Symmetric int8 QDQ (zero points 0, no bias Q/DQ): the ``int8_qdq`` recipe for TensorRT."""
    return quantize_static(src, dst, batches, method, per_channel, symmetric=True, model_type=model_type)


def convert_fp16(src: Path, dst: Path) -> dict[str, Any]:
    """Float weights and compute to fp16; inputs and outputs keep their types."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    src, dst = Path(src), Path(dst)
    with _staging(dst) as tmp:
        model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
        out = tmp / "out.onnx"
        onnx.save(model, str(out))
        os.replace(out, dst)
    return {"tool": "onnxruntime.transformers.float16.convert_float_to_float16", "keep_io_types": True}


#: MatMulNBits' default block (the quantizer's own default, and NNCF's int4 group size).
DEFAULT_BLOCK = 128
#: Above this many bytes a quantized graph keeps its weights in an external-data file.
EXTERNAL_DATA_BYTES = 1_500_000_000


def _fold_transposed_weights(model: Any) -> int:
    """Give every ``MatMul`` whose weight is ``Transpose(initializer)`` its own transposed
    initializer; returns how many were folded.

    The exporter leaves a tied LM head (the embedding matrix, shared with the input
    ``Gather``) as ``MatMul(x, Transpose(W))``; the quantizer only quantizes a constant
    weight, so without this the LM head would stay fp32 while every other layer is
    compressed.
    """
    from onnx import numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    folded = 0
    for node in graph.node:
        source = producers.get(node.input[1]) if node.op_type == "MatMul" else None
        if source is None or source.op_type != "Transpose" or source.input[0] not in initializers:
            continue
        perm = next((list(a.ints) for a in source.attribute if a.name == "perm"), [1, 0])
        array = numpy_helper.to_array(initializers[source.input[0]])
        if array.ndim != 2 or perm != [1, 0]:
            continue
        name = f"{source.input[0]}.transposed"
        if name not in initializers:
            initializers[name] = numpy_helper.from_array(np.ascontiguousarray(array.T), name)
            graph.initializer.append(initializers[name])
        node.input[1] = name
        folded += 1
    used = {name for node in graph.node for name in node.input} | {out.name for out in graph.output}
    dead = [node for node in graph.node if node.op_type == "Transpose" and not set(node.output) & used]
    for node in dead:
        graph.node.remove(node)
    return folded


def weight_only(src: Path, dst: Path, recipe: WeightRecipe) -> dict[str, Any]:
    """Weight-only int8/int4 of a decoder graph with ORT's MatMulNBits quantizer
    (``onnxruntime.quantization.matmul_nbits_quantizer``, round-to-nearest, asymmetric,
    one scale and zero point per block of ``group_size`` input weights).

    Every ``MatMul`` with a constant weight becomes ``MatMulNBits``: the linear layers at
    the recipe's bits and the LM head at 8 bits (as NNCF keeps the last layer at its
    int8 backup precision). The token embedding (a ``Gather``) stays fp32: the quantizer's
    ``GatherBlockQuantized`` needs an opset-21 upgrade it warns may be invalid. Activations
    stay fp32 (``accuracy_level`` unset).
    """
    import onnx
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    block = DEFAULT_BLOCK if recipe.group_size is None else recipe.group_size
    if block < 16 or block & (block - 1):
        raise Unsupported(
            f"ORT's MatMulNBits takes blocks of a power of two >= 16 weights, not group_size={recipe.group_size}",
            "set scenario.quantization.group_size to 16, 32, 64, 128 or 256 (or null: 128)",
        )
    if recipe.ratio != 1:
        raise Unsupported(
            f"ORT's MatMulNBits quantizer gives every layer one bit width; ratio={recipe.ratio} mixes int4 and int8",
            "use scenario.quantization.ratio=1.0 with backend=onnxruntime, or backend=openvino (NNCF) for mixed precision",
        )
    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src))
    folded = _fold_transposed_weights(model)
    initializers = {init.name for init in model.graph.initializer}
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in initializers]
    head = [n.name for n in matmuls if "logits" in n.output]
    body = [n.name for n in matmuls if n.name not in head]
    weight_bytes = sum(init.ByteSize() for init in model.graph.initializer)
    with _staging(dst) as tmp:
        # The quantizer takes every constant-weight MatMul not excluded (nodes_to_include only
        # adds nodes), so: the body first with the head excluded, then the head, the one left.
        for bits, excluded in ((recipe.bits, head), (8, [])):
            config = nbits.DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=False, bits=bits)
            quantizer = nbits.MatMulNBitsQuantizer(model, bits=bits, block_size=block, is_symmetric=False, nodes_to_exclude=excluded, algo_config=config)
            quantizer.process()
            model = quantizer.model.model
        out = tmp / "model.onnx"
        external = weight_bytes > EXTERNAL_DATA_BYTES
        onnx.save(model, str(out), save_as_external_data=external, all_tensors_to_one_file=True, location=f"{dst.name}.data")
        if external:
            os.replace(tmp / f"{dst.name}.data", dst.parent / f"{dst.name}.data")
        os.replace(out, dst)
    return {
        "name": recipe.name,
        "tool": "onnxruntime.quantization.matmul_nbits_quantizer (MatMulNBits, RTN)",
        "weights": f"int{recipe.bits} (asymmetric, blocks of {block})",
        "group_size": block,
        "ratio": 1.0,
        "layers": {f"int{recipe.bits}": len(body), "int8 (LM head)": len(head)},
        "lm_head": "int8",
        "embeddings": "fp32 (Gather)",
        "tied_weights_unshared": folded,
        "activations": "fp32 (MatMulNBits accuracy_level unset)",
        "calibrated": False,
    }


def realise(src: Path, dst: Path, recipe: Recipe, batches: Sequence[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Apply a resolved ``recipe`` (not ``auto``) to ``src``; returns the record's details."""
    name = recipe.name
    if name == "int8_dynamic":
        details = quantize_dynamic(src, dst, recipe.per_channel)
    elif name == "int8_static":
        details = quantize_static(src, dst, batches, recipe.method, recipe.per_channel, False, recipe.model_type)
    elif name == "int8_qdq":
        details = quantize_qdq(src, dst, batches, recipe.method, True, recipe.model_type)
    elif name == "fp16":
        details = convert_fp16(src, dst)
    else:
        raise Unsupported(f"no ONNX recipe '{name}'", "use int8_dynamic, int8_static, int8_qdq or fp16")
    return {"name": name, **details}
