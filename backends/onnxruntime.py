"""ONNX Runtime backend (CPU execution provider by default).

Consumes the exported ONNX file. Thread counts and the graph optimization level
come from typed options; ``0`` threads lets ORT pick (one per physical core).

Compression uses ORT's own tools (:mod:`harness.compression.onnx_quant`):
``int8_dynamic`` (``quantize_dynamic``), ``int8_static`` (``quantize_static`` QDQ,
S8S8, MinMax/Entropy/Percentile, optional per-channel), ``int8_qdq`` (the symmetric
QDQ form TensorRT also consumes) and ``fp16`` (float16 conversion, fp32 inputs and
outputs kept). ``int8`` in ``mode=auto`` follows ORT's guidance: dynamic for
transformers, static QDQ for CNNs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.backend import Artifact, Availability, Backend, Capabilities, Session
from harness.config import choice, cores_bound, require
from harness.errors import Unsupported
from harness.hookspecs import hookimpl
from harness.serving.batching import BatchingOptions

OPT_LEVELS = ("disable", "basic", "extended", "all")
RECIPES = frozenset({"int8_dynamic", "int8_static", "int8_qdq", "fp16"})
#: ``mode=auto``: ORT's documented advice (dynamic for transformers, static for CNNs).
AUTO_MODE = {"transformer": "dynamic", "cnn": "static"}
#: Max abs logit difference against eager fp32 per precision (the output-validation
#: gate). int8 is loose on purpose: it catches a broken graph, while the accuracy gate
#: (``scenario.accuracy.min_relative``) judges whether the quantization is good enough.
TOLERANCE = {"fp32": 1e-3, "fp16": 5e-2, "int8": 1.0}


@dataclass
class OnnxRuntimeOptions:
    """``backend=onnxruntime`` options."""

    intra_op_threads: int = cores_bound()  # more than the cores present are clamped (preflight)
    inter_op_threads: int = cores_bound()
    graph_optimization_level: str = "all"
    execution_mode: str = "sequential"
    providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])
    serving: BatchingOptions = field(default_factory=BatchingOptions)  # LLM serving: the harness's batched decoder

    def __post_init__(self) -> None:
        require(self.intra_op_threads >= 0, "intra_op_threads", f"must be >= 0, got {self.intra_op_threads}")
        require(self.inter_op_threads >= 0, "inter_op_threads", f"must be >= 0, got {self.inter_op_threads}")
        choice(self.graph_optimization_level, OPT_LEVELS, "graph_optimization_level")
        choice(self.execution_mode, ("sequential", "parallel"), "execution_mode")
        require(bool(self.providers), "providers", "must name at least one execution provider")


class OnnxRuntimeSession(Session):
    """An ``InferenceSession``; ``run`` blocks until ORT returns, so wall time is exact."""

    def __init__(self, session: Any, output_names: list[str], device: str) -> None:
        self.session = session
        self.output_names = output_names
        self.device = device

    def load(self, batch: Any) -> dict[str, np.ndarray]:
        wanted = {i.name for i in self.session.get_inputs()}
        return {name: np.ascontiguousarray(value) for name, value in batch.items() if name in wanted}

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(self.output_names, inputs)

    def fetch(self, outputs: list[np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, outputs))


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    options_type = OnnxRuntimeOptions

    @classmethod
    def probe(cls, options: OnnxRuntimeOptions) -> Availability:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            return Availability(False, f"onnxruntime is not installed ({exc}); pip install onnxruntime")
        present = ort.get_available_providers()
        missing = [p for p in options.providers if p not in present]
        if missing:
            return Availability(
                False,
                f"execution provider(s) {', '.join(missing)} not in this onnxruntime build (has {', '.join(present)})",
                versions={cls.name: ort.__version__},
            )
        return Availability(True, devices=tuple(present), versions={cls.name: ort.__version__})

    def capabilities(self) -> Capabilities:
        return Capabilities(precisions=frozenset(TOLERANCE), consumes=("onnx",), recipes=RECIPES, tolerance=TOLERANCE, generation=True)

    def prepare_generation(self, source: Any, plan: Any) -> Any:
        """Decoder LLMs: the exported decoder with past key/values, run with IOBinding
        (:mod:`harness.backends.onnxruntime_generation`)."""
        from harness.backends import onnxruntime_generation

        return onnxruntime_generation.prepare(self, source, plan)

    def prepare_serving(self, model: Any, plan: Any) -> Any:
        """LLM serving: the harness's continuous-batching scheduler over the IOBinding decoder
        (:mod:`harness.backends.onnxruntime_serving`); ``backend.serving.mode=fifo``: one request at a time."""
        if self.options.serving.mode == "fifo":
            from harness.serving.inprocess import fifo_session

            return fifo_session(self, model, plan)
        from harness.backends import onnxruntime_serving

        return onnxruntime_serving.prepare(self, model, plan)

    def compress(self, artifact: Artifact, recipe: Any, calibration: Any) -> Artifact:
        """Realise ``recipe`` with ORT's quantization / conversion tools into ``calibration.workdir``."""
        from harness.compression import onnx_quant
        from harness.compression.recipes import resolve_auto

        recipe = resolve_auto(recipe, AUTO_MODE)
        if recipe.name not in RECIPES or artifact.onnx_path is None:
            return super().compress(artifact, recipe, calibration)
        out = calibration.workdir / "model.onnx"
        details = onnx_quant.realise(artifact.onnx_path, out, recipe, calibration.batches)
        meta = {**artifact.meta, "precision": recipe.precision, "recipe": details}
        return Artifact(artifact.name, artifact.input_names, artifact.output_names, onnx_path=out, meta=meta)

    def version(self) -> str:
        import onnxruntime as ort

        return ort.__version__

    def device(self) -> str:
        provider = self.options.providers[0]
        return "cpu" if provider == "CPUExecutionProvider" else provider.replace("ExecutionProvider", "").lower()

    def session_options(self) -> Any:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = self.options.intra_op_threads
        so.inter_op_num_threads = self.options.inter_op_threads
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.options.graph_optimization_level]
        so.execution_mode = ort.ExecutionMode.ORT_PARALLEL if self.options.execution_mode == "parallel" else ort.ExecutionMode.ORT_SEQUENTIAL
        return so

    def prepare(self, artifact: Artifact, precision: str) -> OnnxRuntimeSession:
        import onnxruntime as ort

        self.check_precision(precision)
        if precision != "fp32" and artifact.meta.get("precision") != precision:
            raise Unsupported(
                f"onnxruntime runs {precision} from a {precision} ONNX, and this artifact is not one",
                f"compress it first with one of the {precision} recipes: {', '.join(sorted(r for r in RECIPES if r.startswith(precision)))}",
            )
        session = ort.InferenceSession(str(artifact.onnx_path), self.session_options(), providers=list(self.options.providers))
        return OnnxRuntimeSession(session, [o.name for o in session.get_outputs()], self.device())


@hookimpl
def harness_register_backends(registry: Any) -> None:
    registry.add_backend(OnnxRuntimeBackend)
