"""ONNX Runtime backend (CPU execution provider by default).

Consumes the exported ONNX file. Thread counts and the graph optimization level
come from typed options; ``0`` threads lets ORT pick (one per physical core).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.backend import Artifact, Availability, Backend, Capabilities, Session
from harness.config import choice, require
from harness.hookspecs import hookimpl

OPT_LEVELS = ("disable", "basic", "extended", "all")


@dataclass
class OnnxRuntimeOptions:
    """``backend=onnxruntime`` options."""

    intra_op_threads: int = 0
    inter_op_threads: int = 0
    graph_optimization_level: str = "all"
    execution_mode: str = "sequential"
    providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])

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
        return Capabilities(precisions=frozenset({"fp32"}), consumes=("onnx",), tolerance={"fp32": 1e-3})

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
        so.execution_mode = (
            ort.ExecutionMode.ORT_PARALLEL if self.options.execution_mode == "parallel" else ort.ExecutionMode.ORT_SEQUENTIAL
        )
        return so

    def prepare(self, artifact: Artifact, precision: str) -> OnnxRuntimeSession:
        import onnxruntime as ort

        self.check_precision(precision)
        session = ort.InferenceSession(str(artifact.onnx_path), self.session_options(), providers=list(self.options.providers))
        return OnnxRuntimeSession(session, [o.name for o in session.get_outputs()], self.device())


@hookimpl
def harness_register_backends(registry: Any) -> None:
    registry.add_backend(OnnxRuntimeBackend)
