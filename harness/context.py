"""The services a scenario reaches the core through: one :class:`RunContext` per run.

The runner builds it after the backend is up and the checkpoint stage has run; a
scenario asks it for the model (:meth:`RunContext.load_model`), the data, the artifact
in the backend's format (the cached, validated export stage) and its compressed form.
Nothing here calls back into the runner or the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from harness import stages
from harness.backend import Artifact, Backend, Workspace
from harness.checkpoints import checkpoint_folder
from harness.compression.pipeline import compress
from harness.config import RunSpec
from harness.data import TaskData, load_dataset
from harness.errors import HarnessError, Unsupported
from harness.export import export_onnx
from harness.models import LoadedModel, load_model


@dataclass
class RunContext:
    """Core services for one run: typed spec, prepared backend, progress reporting."""

    spec: RunSpec
    backend: Backend
    status: Callable[[str], None] = print
    progress: Callable[[str, int, float], None] | None = None
    #: The folder ``auto`` names: the family recipe's checkpoint, resolved by the runner's
    #: checkpoint stage (:mod:`harness.autotrain`) before the scenario starts.
    auto_checkpoint: Path | None = None
    #: The backend that fine-tunes when a scenario asks (:meth:`trainer`); found by the runner.
    find_trainer: Callable[[], Backend] | None = None
    _model_cache: dict[str, Any] = field(default_factory=dict)
    _workspace: Workspace | None = None

    @property
    def workspace(self) -> Workspace:
        """The backend's folders for this run (:class:`harness.backend.Workspace`): its own
        cache under ``<cache>/backends/<name>/`` and a work folder removed by :meth:`close`."""
        if self._workspace is None:
            self._workspace = Workspace.create(self.backend.name, self.cache_root)
        return self._workspace

    def close(self) -> None:
        """End of the run: remove the work folder (the backend's cache stays)."""
        if self._workspace is not None:
            self._workspace.close()
            self._workspace = None

    @property
    def cache_root(self) -> str | None:
        return self.spec.cache_dir

    def load_model(self, checkpoint: str | None = None) -> LoadedModel:
        """The model the spec names, as an eval-mode :class:`harness.models.LoadedModel`.

        ``checkpoint`` (else ``model.checkpoint``) is a folder or ``auto``: the cached
        checkpoint of the family's train recipe, which the runner's checkpoint stage
        found or trained before the scenario started (a scenario never trains it here).
        """
        key = checkpoint or self.spec.model.checkpoint or ""
        if key not in self._model_cache:
            if key == "auto":
                if self.auto_checkpoint is None:
                    raise HarnessError(
                        "checkpoint 'auto' was not resolved before the scenario ran", "declare the option in the scenario kind's checkpoint_options"
                    )
                folder: Path | None = self.auto_checkpoint
            else:
                folder = checkpoint_folder(key) if key else None
            self.status(f"loading model {self.spec.model.name}" + (f" from {folder}" if folder else ""))
            with stages.timed("model_build"):  # a random init with a cached card is built only when used
                self._model_cache[key] = load_model(self.spec.model, str(folder) if folder else None, defer=True, cache_root=self.cache_root)
        return self._model_cache[key]

    def trainer(self) -> Backend:
        """The backend that trains for this run: its own when it declares training, else the
        first installed one that does (``Unsupported`` when none can)."""
        if self.backend.capabilities().training:
            return self.backend
        if self.find_trainer is None:
            raise Unsupported(
                f"backend '{self.backend.name}' cannot train and no other trainer was offered", "use a backend that declares training, e.g. backend=pytorch"
            )
        return self.find_trainer()

    def load_data(self, seq_len: int | None = None, tokenizer: Any = None) -> TaskData:
        """The dataset the spec names, tokenized for text tasks."""
        with stages.timed("data"):
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
            with stages.timed("export"):
                result = export_onnx(model, data.sample_batch(2), self.cache_root, on_status=self.status)
            artifact = Artifact(model.name, model.input_names, model.output_names, onnx_path=result.path, meta=meta, workspace=self.workspace)
            return artifact, {"export": result.metrics()}
        if "torch" in formats:
            artifact = Artifact(model.name, model.input_names, model.output_names, module=model.module, meta=meta, workspace=self.workspace)
            return artifact, {}
        raise Unsupported(
            f"backend '{self.backend.name}' consumes {', '.join(formats)}, which the harness cannot produce",
            "declare 'onnx' or 'torch' in the backend's capabilities().consumes",
        )

    def compressed(self, artifact: Artifact, recipe: Any, data: Any, source_key: str, batch_size: int = 8) -> tuple[Artifact, dict[str, Any]]:
        """``artifact`` compressed by the backend with ``recipe`` (cached), plus stage metrics.

        Calibration samples come from ``data``'s train split in batches of ``batch_size``;
        see :func:`harness.compression.pipeline.compress`.
        """
        with stages.timed("compress"):
            out, metrics = compress(self.backend, artifact, recipe, data, source_key, self.cache_root, self.status, batch_size)
        meta = {**artifact.meta, **out.meta}  # the run's shapes travel with the compressed model too
        return replace(out, meta=meta, workspace=out.workspace or self.workspace), metrics
