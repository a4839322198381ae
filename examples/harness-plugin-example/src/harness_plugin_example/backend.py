"""The ``onnxref`` backend: the harness's exported ONNX run by ``onnx.reference.ReferenceEvaluator``.

Why this backend exists: it is the smallest *real* accelerator plugin one can write. The
reference evaluator is a second, independent implementation of the ONNX operators in
numpy, so its outputs are computed, not copied from another runtime, and comparing them
with eager PyTorch checks the exported graph against the ONNX specification itself. It is
slow (pure numpy, one op at a time); it is a correctness backend, not a fast one.

It follows the contract every backend follows (``docs/plugins.md`` in harness):

* ``probe`` says whether ``onnx.reference`` imports, and never raises;
* ``capabilities`` declares fp32 only, ONNX input, and the tolerance against eager fp32;
* ``prepare`` refuses other precisions with ``Unsupported`` and builds a session;
* the session's ``run`` is synchronous (numpy returns when the work is done), so the
  default wall-clock timer is exact.

No compression recipe and no training: the inherited ``compress`` and
``prepare_training`` refuse them with ``Unsupported``, which the harness records as
status ``unsupported``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.backend import Artifact, Availability, Backend, Capabilities, Session
from harness.columns import Column
from harness.config import require
from harness.errors import Unsupported

#: Max abs logit difference against eager fp32. Both compute in float32; only the order
#: of floating-point operations differs (measured: ~2e-8 on a 2-layer BERT).
TOLERANCE = {"fp32": 1e-4}


@dataclass
class OnnxRefOptions:
    """``backend=onnxref`` options (``conf/backend/onnxref.yaml`` holds the defaults).

    ``verbose`` is the evaluator's own verbosity (it prints intermediate results);
    ``check_shape_annotations`` checks every computed value against the shape the ONNX
    declares for it, a diagnostic for exporters (slower).
    """

    verbose: int = 0
    check_shape_annotations: bool = False

    def __post_init__(self) -> None:
        require(0 <= self.verbose <= 4, "verbose", f"must be in 0..4, got {self.verbose}")


def _gather_elements_op() -> type:
    """A ``GatherElements`` kernel to replace the reference one.

    Why: onnx's reference ``GatherElements`` uses ``np.choose``, which takes at most 64
    choices; on larger axes it falls back to a helper that reads only the first index per
    row, so the ``position_ids`` gather of every BERT export (axis of 512) fails. ONNX's
    GatherElements is exactly ``np.take_along_axis``; ``new_ops`` is the evaluator's
    documented way to replace an operator.
    """
    from onnx.reference.op_run import OpRun

    class GatherElements(OpRun):
        op_domain = ""

        def _run(self, data: np.ndarray, indices: np.ndarray, axis: int | None = None) -> tuple[np.ndarray]:
            axis = 0 if axis is None else int(axis)
            indices = indices.astype(np.int64, copy=False)
            indices = np.where(indices < 0, indices + data.shape[axis], indices)
            return (np.take_along_axis(data, indices, axis=axis),)

    return GatherElements


class OnnxRefSession(Session):
    """A ``ReferenceEvaluator`` on one ONNX file; ``run`` returns when numpy is done."""

    def __init__(self, evaluator: Any, load_s: float) -> None:
        self.evaluator = evaluator
        self.input_names = tuple(evaluator.input_names)
        self.output_names = tuple(evaluator.output_names)
        self.device = "cpu"  # the record's backend.device comes from here
        self.load_s = load_s

    def metrics(self) -> dict[str, Any]:
        """Engine facts, recorded under ``metrics.backend`` (plugin API 2)."""
        return {"load_s": self.load_s, "nodes": len(self.evaluator.rt_nodes_) if self.evaluator else None}

    def load(self, batch: Any) -> dict[str, np.ndarray]:
        missing = [name for name in self.input_names if name not in batch]
        if missing:
            raise Unsupported(f"the batch has no input {', '.join(missing)} that the ONNX graph needs")
        return {name: np.ascontiguousarray(batch[name]) for name in self.input_names}

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.evaluator.run(None, inputs)

    def fetch(self, outputs: list[np.ndarray]) -> dict[str, np.ndarray]:
        # Copies: the evaluator may hand back views of its own intermediate buffers.
        return {name: np.array(value, copy=True) for name, value in zip(self.output_names, outputs)}

    def close(self) -> None:
        self.evaluator = None


class OnnxRefBackend(Backend):
    name = "onnxref"
    options_type = OnnxRefOptions
    # What a report shows of this backend's own figures (``Session.metrics`` -> ``metrics.backend``).
    report_columns = (Column("metrics.backend.load_s", "onnxref load s", "seconds", "lower"),)

    @classmethod
    def probe(cls, options: OnnxRefOptions) -> Availability:
        try:
            import onnx
            from onnx.reference import ReferenceEvaluator  # noqa: F401  (what prepare needs)
        except ImportError as exc:
            return Availability(False, f"onnx.reference is not importable ({exc}); pip install 'onnx>=1.16'")
        return Availability(True, devices=("cpu",), versions={cls.name: onnx.__version__})

    def capabilities(self) -> Capabilities:
        return Capabilities(precisions=frozenset(TOLERANCE), consumes=("onnx",), tolerance=TOLERANCE)

    def prepare(self, artifact: Artifact, precision: str) -> OnnxRefSession:
        from onnx.reference import ReferenceEvaluator

        self.check_precision(precision)
        if artifact.onnx_path is None:
            raise Unsupported("onnxref runs ONNX files and this artifact has none", "give prepare an artifact with onnx_path set")
        started = time.perf_counter()
        evaluator = ReferenceEvaluator(
            str(artifact.onnx_path),
            new_ops=[_gather_elements_op()],
            verbose=self.options.verbose,
            check_shape_annotations=self.options.check_shape_annotations,
        )
        return OnnxRefSession(evaluator, time.perf_counter() - started)
