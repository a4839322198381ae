"""The Scenario contract and the context the runner hands to every scenario.

A scenario (inference, compressed inference, training, distillation...) turns a
backend plus a model and data into metrics. It talks to backends only through the
Backend/Session contract and reaches the core's services (model sources, datasets,
the artifact pipeline) through :class:`RunContext`, so no scenario imports a
concrete backend and no backend parses config.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from harness.backend import Artifact, Backend
from harness.columns import Column
from harness.config import RunSpec
from harness.errors import Unsupported


@dataclass
class ScenarioResult:
    """What a scenario measured, ready to be merged into the record."""

    precision: str
    metrics: dict[str, Any]
    batch_size: int | None = None
    seq_len: int | None = None
    model: dict[str, Any] = field(default_factory=dict)
    backend: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunContext:
    """Core services for one run: typed spec, prepared backend, progress reporting."""

    spec: RunSpec
    backend: Backend
    status: Callable[[str], None] = print
    progress: Callable[[str, int, float], None] | None = None
    _model_cache: dict[str, Any] = field(default_factory=dict)

    @property
    def cache_root(self) -> str | None:
        return self.spec.cache_dir

    def load_model(self, checkpoint: str | None = None) -> Any:
        """The model the spec names, as an eval-mode :class:`harness.models.LoadedModel`.

        ``checkpoint`` (else ``model.checkpoint``) is a folder or ``auto``: the cached
        checkpoint of the family's train recipe, trained once when absent
        (:func:`harness.checkpoints.resolve`).
        """
        from dataclasses import replace

        from harness.checkpoints import resolve
        from harness.models import load_model

        key = checkpoint or self.spec.model.checkpoint or ""
        if key not in self._model_cache:
            options = replace(self.spec.model, checkpoint=key or None)
            folder = resolve(options, self.spec.dataset, self.cache_root, self.status, trainer=self.backend)
            self.status(f"building model {self.spec.model.name}" + (f" from {folder}" if folder else ""))
            self._model_cache[key] = load_model(self.spec.model, str(folder) if folder else None)
        return self._model_cache[key]

    def load_data(self, seq_len: int | None = None, tokenizer: Any = None) -> Any:
        """The dataset the spec names, tokenized for text tasks."""
        from harness.data import load_dataset

        return load_dataset(self.spec.dataset, seq_len=seq_len or 128, tokenizer=tokenizer)

    def artifact(self, model: Any, data: Any, batch: Any) -> tuple[Artifact, dict[str, Any]]:
        """The model in the first format the backend consumes, plus stage metrics.

        ONNX artifacts go through the cached, validated export stage. ``meta`` carries
        the shapes the run will use (``batch_size``, ``seq_len``, ``sample_shape``), so
        backends that build shape-specialised engines can plan for them.
        """
        first = batch[model.input_names[0]]
        meta = {
            "batch_size": int(first.shape[0]),
            "seq_len": int(first.shape[1]) if first.ndim == 2 else None,
            "sample_shape": {name: list(batch[name].shape) for name in model.input_names},
        }
        formats = self.backend.capabilities().consumes
        if "onnx" in formats and ("torch" not in formats or formats.index("onnx") < formats.index("torch")):
            from harness.export import export_onnx

            result = export_onnx(model, data.sample_batch(2), self.cache_root, on_status=self.status)
            artifact = Artifact(model.name, model.input_names, model.output_names, onnx_path=result.path, meta=meta)
            return artifact, {"export": result.metrics()}
        if "torch" in formats:
            artifact = Artifact(model.name, model.input_names, model.output_names, module=model.module, meta=meta)
            return artifact, {}
        raise Unsupported(
            f"backend '{self.backend.name}' consumes {', '.join(formats)}, which the harness cannot produce",
            "declare 'onnx' or 'torch' in the backend's capabilities().consumes",
        )

    def compressed(self, artifact: Artifact, recipe: Any, data: Any, source_key: str,
                   batch_size: int = 8) -> tuple[Artifact, dict[str, Any]]:
        """``artifact`` compressed by the backend with ``recipe`` (cached), plus stage metrics.

        Calibration samples come from ``data``'s train split in batches of ``batch_size``;
        see :func:`harness.compression.pipeline.compress`.
        """
        from harness.compression.pipeline import compress

        return compress(self.backend, artifact, recipe, data, source_key, self.cache_root, self.status, batch_size)


class Scenario(abc.ABC):
    """A scenario kind, selected by ``scenario.kind`` and typed by ``options_type``."""

    kind: ClassVar[str]
    options_type: ClassVar[type]
    #: The kind's own figures for the terminal table and reports (besides the common
    #: throughput, latency, memory, accuracy, MFU). The runner copies them into each
    #: record, so a report shows them even where this plugin is not installed.
    report_columns: ClassVar[tuple[Column, ...]] = ()

    def __init__(self, options: Any) -> None:
        self.options = options

    @abc.abstractmethod
    def run(self, ctx: RunContext) -> ScenarioResult:
        """Measure and return metrics. Raise a :class:`harness.errors.HarnessError` to
        end the run with its status (``unsupported``, ``mismatch``...) and reason."""
