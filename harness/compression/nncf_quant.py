"""OpenVINO recipes with NNCF: post-training int8 quantization and weight-only int8.

``int8_static`` runs ``nncf.quantize`` on the OpenVINO model with real calibration
samples: for transformers with ``ModelType.TRANSFORMER`` (keeps the attention
softmax/LayerNorm patterns NNCF knows to be sensitive in float) and the ``MIXED``
preset (symmetric weights, asymmetric activations); for CNNs the ``PERFORMANCE``
preset. ``int8_weights`` runs ``nncf.compress_weights`` (INT8_ASYM): int8 weights,
float activations, no calibration.

``method`` maps to NNCF's activation range estimators: ``default`` keeps NNCF's
per-model-type choice, ``MinMax`` -> ``RangeEstimatorParametersSet.MINMAX``,
``Percentile`` -> ``MEAN_QUANTILE``. NNCF has no entropy (KL) calibration, so
``Entropy`` is refused rather than approximated. NNCF quantizes weights per channel
on CPU whatever ``per_channel`` says; the record says so.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from harness.compression.recipes import Recipe, WeightRecipe
from harness.errors import Unsupported


def _quiet() -> None:
    import nncf

    nncf.set_log_level(logging.ERROR)


def _range_estimator(method: str) -> Any:
    """NNCF advanced parameters for ``method`` (None = NNCF's defaults)."""
    if method == "default":
        return None
    if method == "Entropy":
        raise Unsupported(
            "NNCF has no entropy (KL) calibration for OpenVINO models", "use scenario.quantization.method=default, MinMax or Percentile with backend=openvino"
        )
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    estimator = RangeEstimatorParametersSet.MINMAX if method == "MinMax" else RangeEstimatorParametersSet.MEAN_QUANTILE
    return AdvancedQuantizationParameters(activations_range_estimator_params=estimator)


def quantize(model: Any, batches: Sequence[dict[str, np.ndarray]], recipe: Recipe) -> tuple[Any, dict[str, Any]]:
    """Post-training int8 quantization of an ``ov.Model`` calibrated on ``batches``."""
    import nncf

    _quiet()
    if not batches:
        raise Unsupported("NNCF post-training quantization needs calibration samples and got none", "set scenario.quantization.calibration_samples >= 1")
    names = {name for port in model.inputs for name in port.get_names()}
    items = [{k: v for k, v in b.items() if k in names} for b in batches]
    transformer = recipe.model_type == "transformer"
    kwargs: dict[str, Any] = {
        "preset": nncf.QuantizationPreset.MIXED if transformer else nncf.QuantizationPreset.PERFORMANCE,
        "target_device": nncf.TargetDevice.CPU,
        "subset_size": len(items),
    }
    if transformer:
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
    advanced = _range_estimator(recipe.method)
    if advanced is not None:
        kwargs["advanced_parameters"] = advanced
    quantized = nncf.quantize(model, nncf.Dataset(items), **kwargs)
    samples = int(sum(len(next(iter(b.values()))) for b in items))
    return quantized, {
        "name": recipe.name,
        "tool": "nncf.quantize",
        "nncf": nncf.__version__,
        "preset": "MIXED" if transformer else "PERFORMANCE",
        "model_type": "TRANSFORMER" if transformer else "default",
        "method": recipe.method,
        "weights": "int8 (symmetric, per channel)",
        "activations": "int8 (asymmetric)" if transformer else "int8 (symmetric)",
        "per_channel": True,
        "calibrated": True,
        "calibration_samples": samples,
    }


def compress_weights(model: Any, recipe: Recipe) -> tuple[Any, dict[str, Any]]:
    """Weight-only int8 (``nncf.compress_weights``, INT8_ASYM): activations stay float."""
    import nncf

    _quiet()
    compressed = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    return compressed, {
        "name": recipe.name,
        "tool": "nncf.compress_weights",
        "nncf": nncf.__version__,
        "mode": "INT8_ASYM",
        "weights": "int8 (asymmetric, per channel)",
        "activations": "float at the inference precision hint; the CPU plugin may quantize them per call (DYNAMIC_QUANTIZATION_GROUP_SIZE)",
        "calibrated": False,
    }


#: NNCF's int4 group size when none is asked for (its own default).
DEFAULT_INT4_GROUP = 128
#: OpenVINO element types of compressed weights -> the precision they hold.
_WEIGHT_TYPES = {"u4": "int4", "i4": "int4", "u8": "int8", "i8": "int8", "f32": "fp32", "f16": "fp16", "bf16": "bf16"}


def weights_by_precision(model: Any) -> dict[str, int]:
    """Parameters per storage precision among an ``ov.Model``'s 2-D weight constants: what
    a compressed model really holds (NNCF's mixed precision and backup layers included)."""
    counts: dict[str, int] = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Constant":
            continue
        shape = list(op.get_output_partial_shape(0).get_shape())
        if len(shape) < 2 or min(shape) < 2:
            continue  # scales, zero points and other small constants
        kind = _WEIGHT_TYPES.get(op.get_element_type().get_type_name())
        if kind is not None:
            counts[kind] = counts.get(kind, 0) + int(np.prod(shape))
    return counts


def compress_decoder_weights(model: Any, recipe: WeightRecipe) -> tuple[Any, dict[str, Any]]:
    """Weight-only int8/int4 of a decoder LLM's ``ov.Model`` with ``nncf.compress_weights``.

    int4: ``INT4_ASYM`` with ``group_size`` (null: NNCF's 128) and ``ratio`` (the rest at
    the INT8_ASYM backup; NNCF picks which layers data-free, by weight quantization error),
    the embeddings and the last layer at the int8 backup (NNCF's ``all_layers=False``).
    int8: ``INT8_ASYM``, one scale per output channel (NNCF has no int8 groups).
    """
    import nncf

    _quiet()
    if recipe.precision == "int8":
        if recipe.group_size not in (None, -1):
            raise Unsupported(
                f"NNCF compresses int8 weights per output channel, not in groups of {recipe.group_size}",
                "leave scenario.quantization.group_size null (or -1) with llm_int8 on openvino",
            )
        compressed = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
        group, ratio = -1, 1.0
    else:
        group = DEFAULT_INT4_GROUP if recipe.group_size is None else recipe.group_size
        ratio = recipe.ratio
        try:
            compressed = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT4_ASYM, group_size=group, ratio=ratio)
        except nncf.errors.InvalidGroupSizeError as exc:  # a layer's input size is not a multiple of the group
            raise Unsupported(
                f"NNCF cannot split every layer into groups of {group}: {' '.join(str(exc).split())[:200]}",
                "set scenario.quantization.group_size to a divisor of the model's widths",
            ) from None
    return compressed, {
        "name": recipe.name,
        "tool": "nncf.compress_weights",
        "nncf": nncf.__version__,
        "mode": "INT8_ASYM" if recipe.precision == "int8" else "INT4_ASYM",
        "weights": f"{recipe.precision} (asymmetric, " + ("per channel)" if group == -1 else f"groups of {group})"),
        "group_size": group,
        "ratio": ratio,
        "backup": "INT8_ASYM (embeddings, last layer" + (", the 1 - ratio share)" if ratio < 1 else ")"),
        "parameters_by_precision": weights_by_precision(compressed),
        "activations": "float at the inference precision hint; the CPU plugin may quantize them per call (DYNAMIC_QUANTIZATION_GROUP_SIZE, in metrics.backend)",
        "calibrated": False,
    }


def realise(model: Any, recipe: Recipe, batches: Sequence[dict[str, np.ndarray]]) -> tuple[Any, dict[str, Any]]:
    """Apply a resolved ``recipe`` (``int8_static`` or ``int8_weights``) to an ``ov.Model``."""
    if recipe.name == "int8_static":
        return quantize(model, batches, recipe)
    if recipe.name == "int8_weights":
        return compress_weights(model, recipe)
    raise Unsupported(
        f"openvino has no recipe '{recipe.name}' (NNCF realises int8_static and int8_weights)",
        "use scenario.quantization.mode=static, weights or auto with backend=openvino",
    )
