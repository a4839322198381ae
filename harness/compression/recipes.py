"""Compression recipes: *what* to do to a model, independent of the backend doing it.

A :class:`Recipe` names a target precision and a mode; each backend realises it the
way it does best (ORT quantization tools, NNCF, torch.ao) in ``Backend.compress`` and
lists the recipe names it realises in ``capabilities().recipes``. A backend that does
not list a recipe refuses it (status ``unsupported``): nothing is silently measured
in fp32 instead.

Modes for int8:

- ``auto``: the backend's best int8 recipe for this model type (its ``compress``
  records which one it chose);
- ``dynamic``: int8 weights, activations quantized on the fly per call (no calibration);
- ``static``: int8 weights and activations with ranges calibrated on real train
  samples, in the backend's preferred form (ORT QDQ S8S8, NNCF post-training);
- ``qdq``: static QDQ ONNX with *symmetric* int8 activations and weights (all zero
  points 0): the explicit-quantization form TensorRT parses (``int8_qdq``);
- ``weights``: weight-only int8 compression (activations stay float).

fp16 / bf16 recipes convert the model's float type where a backend needs a converted
artifact (ORT fp16); backends that set precision at run time (OpenVINO's inference
precision hint, PyTorch autocast) need no recipe for them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Optional

from harness.families import FAMILIES
from harness.validation import choice, require

PRECISIONS = ("int8", "fp16", "bf16")
INT8_MODES = ("auto", "dynamic", "static", "qdq", "weights")
METHODS = ("default", "MinMax", "Entropy", "Percentile")
MODEL_TYPES = ("transformer", "cnn")
#: Modes that read calibration samples.
CALIBRATED = ("auto", "static", "qdq")


@dataclass(frozen=True)
class Recipe:
    """One compression recipe. ``name`` is what backends list in ``capabilities().recipes``.

    ``method`` is the activation-range calibration (static/qdq): MinMax, Entropy (KL),
    Percentile, or ``default`` = the tool's own default (ORT: MinMax; NNCF: its
    per-model-type range estimators). ``per_channel`` quantizes weights per output channel.
    ``calibration_samples`` real train examples calibrate activation ranges.
    ``model_type`` lets backends pick transformer- or CNN-specific settings (NNCF's
    ``ModelType.TRANSFORMER``, ORT's dynamic-for-transformers advice).
    """

    precision: str = "int8"
    mode: str = "auto"
    method: str = "default"
    per_channel: bool = False
    calibration_samples: int = 128
    model_type: str = "transformer"

    def __post_init__(self) -> None:
        choice(self.precision, PRECISIONS, "precision")
        if self.precision == "int8":
            choice(self.mode, INT8_MODES, "quantization.mode")
        else:
            require(self.mode == "convert", "quantization.mode", f"{self.precision} recipes only convert, got '{self.mode}'")
        choice(self.method, METHODS, "quantization.method")
        choice(self.model_type, MODEL_TYPES, "model_type")
        require(self.calibration_samples >= 1, "quantization.calibration_samples", f"must be >= 1, got {self.calibration_samples}")

    @property
    def name(self) -> str:
        """``int8_dynamic``, ``int8_static``, ``int8_qdq``, ``int8_weights``, ``fp16``, ``bf16`` (or ``int8_auto``)."""
        return self.precision if self.precision != "int8" else f"int8_{self.mode}"

    @property
    def calibrated(self) -> bool:
        """Whether the recipe reads calibration samples."""
        return self.precision == "int8" and self.mode in CALIBRATED

    def with_mode(self, mode: str) -> "Recipe":
        """The same recipe with ``mode`` resolved (backends resolve ``auto`` with this)."""
        return replace(self, mode=mode)

    def key(self) -> dict[str, Any]:
        """The fields that determine the compressed artifact, for cache keys.

        Calibration settings only count when the recipe calibrates, so a dynamic
        recipe reuses its artifact whatever the calibration sample count says.
        """
        fields = asdict(self)
        if not self.calibrated:
            fields.pop("method")
            fields.pop("calibration_samples")
        return fields

    def describe(self) -> dict[str, Any]:
        """The record's view of the recipe."""
        return {"name": self.name, **asdict(self)}


def conversion(precision: str) -> Recipe:
    """The float-type conversion recipe for ``fp16`` or ``bf16``."""
    return Recipe(precision=precision, mode="convert")


def int8_qdq(calibration_samples: int = 128, method: str = "default", model_type: str = "transformer") -> Recipe:
    """The explicit-quantization recipe TensorRT consumes: symmetric int8 QDQ, per-channel weights.

    Realised for any ONNX backend by :func:`harness.compression.onnx_quant.quantize_qdq`
    (zero points all 0, int8 activations and weights, standard-domain Q/DQ nodes).
    """
    return Recipe("int8", "qdq", method, True, calibration_samples, model_type)


def resolve_auto(recipe: Recipe, preferred: dict[str, str]) -> Recipe:
    """Resolve ``mode=auto`` from a backend's ``{model_type: mode}`` preference table."""
    if recipe.precision != "int8" or recipe.mode != "auto":
        return recipe
    return recipe.with_mode(preferred[recipe.model_type])


#: Recipe model type per model family (``model.family``), from the family table.
MODEL_TYPE_OF = {name: family.compression_type for name, family in FAMILIES.items()}


@dataclass
class QuantizationOptions:
    """``scenario.quantization.*``: how an int8 run quantizes (see :class:`Recipe`).

    ``calibration_samples`` real train examples, ``calibration_batch_size`` per batch.
    """

    mode: str = "auto"
    method: str = "default"
    per_channel: bool = False
    calibration_samples: int = 128
    calibration_batch_size: int = 8

    def __post_init__(self) -> None:
        choice(self.mode, INT8_MODES, "quantization.mode")
        choice(self.method, METHODS, "quantization.method")
        require(self.calibration_samples >= 1, "quantization.calibration_samples", f"must be >= 1, got {self.calibration_samples}")
        require(self.calibration_batch_size >= 1, "quantization.calibration_batch_size", f"must be >= 1, got {self.calibration_batch_size}")


def recipe_for(precision: str, quantization: QuantizationOptions, family: str, backend_recipes: frozenset[str]) -> "Recipe | None":
    """The recipe a run at ``precision`` needs on a backend offering ``backend_recipes``.

    int8 always needs one (a backend without int8 recipes refuses it). fp16/bf16 need a
    conversion recipe only where the backend offers one (it needs a converted
    artifact, e.g. ORT fp16); elsewhere precision is set at run time. fp32: none.
    """
    model_type = MODEL_TYPE_OF.get(family, "transformer")
    if precision == "int8":
        return Recipe("int8", quantization.mode, quantization.method, quantization.per_channel, quantization.calibration_samples, model_type)
    if precision in ("fp16", "bf16") and precision in backend_recipes:
        return replace(conversion(precision), model_type=model_type)
    return None


#: Weight-only precisions of decoder LLMs and their bits per weight.
WEIGHT_BITS = {"int8": 8, "int4": 4}


@dataclass(frozen=True)
class WeightRecipe:
    """Weight-only compression of a decoder LLM (``+scenario=llm_int8`` / ``llm_int4``).

    The linear layers' weights are stored as ``precision`` integers (asymmetric, one scale
    and zero point per group), activations stay float; each backend realises it with its
    own tool (NNCF ``compress_weights``, ORT's MatMulNBits quantizer, torch's weight-only
    kernels, llama.cpp's GGUF types) and records what it did.

    ``group_size``: consecutive input-dimension weights sharing one scale; None = the
    backend's default (its realised recipe says which), -1 = one group per output channel.
    ``ratio``: for int4, the share of the weights (by parameter count) compressed to int4,
    the rest to int8 (NNCF's mixed precision); 1.0 = every eligible layer at int4.
    """

    precision: str = "int4"
    group_size: Optional[int] = None
    ratio: float = 1.0

    def __post_init__(self) -> None:
        choice(self.precision, tuple(WEIGHT_BITS), "precision")
        require(
            self.group_size is None or self.group_size == -1 or self.group_size >= 2,
            "quantization.group_size",
            f"must be null (the backend's default), -1 (per channel) or >= 2, got {self.group_size}",
        )
        require(0 < self.ratio <= 1, "quantization.ratio", f"must be in (0, 1], got {self.ratio}")
        require(
            self.ratio == 1 or self.precision == "int4",
            "quantization.ratio",
            f"mixes int4 with int8 layers, so it needs precision int4 (got {self.precision} with ratio {self.ratio})",
        )

    @property
    def name(self) -> str:
        """``int8_weights`` or ``int4_weights``."""
        return f"{self.precision}_weights"

    @property
    def bits(self) -> int:
        return WEIGHT_BITS[self.precision]

    def key(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> dict[str, Any]:
        """The record's view of the requested recipe."""
        return {"name": self.name, **asdict(self)}
