"""The Backend / Session contract every backend plugin implements (plugin API 2).

A backend never sees Hydra config: it receives its typed options dataclass
(``options_type``), validated by the core before ``probe`` or ``prepare`` is called.
A scenario never imports a concrete backend: it only talks to this contract.

Guarantees the core gives a backend:

* **Batch shapes.** Every batch a session receives (``load``/``run``, measured or scored)
  has exactly the artifact's ``meta["sample_shape"]``: the scenario's batch size and
  sequence length. Where a split does not divide into whole batches, the last partial
  batch is *padded* to the full shape (its first row repeated) and the padded rows'
  outputs are dropped (:func:`harness.accuracy.padded_batches`); a backend never sees
  a short batch and may build shape-specialised engines.
* **Places to write.** ``artifact.workspace`` (:class:`Workspace`) names a cache folder
  of this backend's own (compiled engines, converted IR; kept across runs, keyed by the
  backend) and a work folder for this run only (a shape-specialised ONNX, logs; removed
  after the run).
* **One source per fact.** The backend's version is ``Availability.versions[name]``
  from :meth:`Backend.probe`; the device a run used is ``Session.device``; engine facts
  (compile time, engine size, cache hit) are :meth:`Session.metrics`, recorded under
  ``metrics.backend`` and shown by reports through ``Backend.report_columns``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping

import numpy as np

from harness.cache import Workspace
from harness.columns import Column
from harness.errors import Unsupported
from harness.timing import Timer, WallClockTimer

if TYPE_CHECKING:
    from harness.generation.session import DecoderSource, GenerationPlan, GenerationSession

Batch = Mapping[str, np.ndarray]

__all__ = ["Artifact", "Availability", "Backend", "Batch", "Capabilities", "Session", "TrainingSession", "Workspace"]


@dataclass(frozen=True)
class Availability:
    """Result of :meth:`Backend.probe`: can this backend run on this machine now?"""

    available: bool
    reason: str = ""
    devices: tuple[str, ...] = ()
    versions: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, declared up front so the core can refuse cleanly.

    ``consumes`` lists the artifact formats the backend prepares, in order of
    preference (``"onnx"``, ``"torch"``, or a plugin's own IR built from one of them).
    ``tolerance`` maps precision to the max abs output difference against the eager
    fp32 reference that the backend promises (the output-validation gate).
    ``generation``: the backend runs decoder LLMs through :meth:`Backend.prepare_generation`
    (the contract in :mod:`harness.generation.session`).
    """

    precisions: frozenset[str] = frozenset({"fp32"})
    consumes: tuple[str, ...] = ("onnx",)
    training: bool = False
    generation: bool = False
    recipes: frozenset[str] = frozenset()
    tolerance: Mapping[str, float] = field(default_factory=lambda: {"fp32": 1e-3})
    #: ``scenario.distributed.strategy`` values it trains with (when ``training``).
    training_strategies: frozenset[str] = frozenset({"ddp"})


@dataclass
class Artifact:
    """A model in the form a backend consumes, produced by the artifact pipeline.

    ``onnx_path`` is set for ONNX artifacts, ``module`` for torch ones. ``input_names``
    and ``output_names`` name the batch keys the model takes and the outputs it gives.
    ``meta`` carries the shapes of the run (``batch_size``, ``seq_len``, ``sample_shape``:
    every batch a session gets has that shape); ``workspace`` the folders a backend may
    write to (None outside a run, e.g. in a unit test that builds an artifact by hand).
    """

    name: str
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    onnx_path: Path | None = None
    module: Any = None
    meta: dict[str, Any] = field(default_factory=dict)
    workspace: Workspace | None = None


class _DeviceSession(abc.ABC):
    """What inference and training sessions share: the device, its timer, figures for the record."""

    device: str = "cpu"
    timer: Timer = WallClockTimer()

    def memory(self) -> dict[str, float]:
        """Peak memory figures in MiB that the backend can measure (may be empty)."""
        return {}

    def metrics(self) -> dict[str, Any]:
        """Engine facts for the record's ``metrics.backend`` (compile or build seconds, engine
        size, whether a cached engine was reused, XLA compile vs execute time...); declare
        the ones a report should show in ``Backend.report_columns``."""
        return {}


class Session(_DeviceSession):
    """A prepared, reusable model on a device.

    ``run`` returns only when the device has finished the work; syncing is the
    session's job (and its timer's), never the caller's.
    """

    def load(self, batch: Batch) -> Any:
        """Turn a host batch into backend-native inputs (kept out of the timed region)."""
        return dict(batch)

    @abc.abstractmethod
    def run(self, inputs: Any) -> Any:
        """Run one inference on ``load``-ed inputs and return backend-native outputs."""

    @abc.abstractmethod
    def fetch(self, outputs: Any) -> dict[str, np.ndarray]:
        """Copy outputs of :meth:`run` to host numpy arrays, keyed by output name."""

    def close(self) -> None:
        """Release device resources. Sessions are also closed when garbage-collected."""

    #: How many calls :meth:`run_many` keeps in flight (1 = back to back).
    in_flight: int = 1

    def run_many(self, inputs: Any, min_calls: int, min_seconds: float) -> tuple[int, float]:
        """Offline load: run calls on ``inputs`` until both ``min_calls`` and ``min_seconds``
        are reached; return (calls completed, wall seconds from first start to last done).

        The default runs them back to back. A backend with an asynchronous API (an
        OpenVINO infer-request pool, several CUDA streams) overrides it to keep
        ``in_flight`` calls going at once, which is how its own benchmark tool measures
        throughput; throughput is then ``calls * batch / seconds``.
        """
        import time

        started = time.perf_counter()
        calls = 0
        while calls < min_calls or time.perf_counter() - started < min_seconds:
            self.run(inputs)
            calls += 1
        return calls, time.perf_counter() - started


class TrainingSession(_DeviceSession):
    """A model being trained on a device (only backends with ``capabilities().training``).

    ``train_step`` runs forward, backward and the optimizer update for one batch and
    returns the loss once the device is done, so the scenario can time steps with
    the session's timer exactly like inference calls.
    """

    def load(self, batch: Batch) -> Any:
        """Turn a host batch (features and ``labels``) into backend-native inputs."""
        return dict(batch)

    @abc.abstractmethod
    def train_step(self, inputs: Any) -> float:
        """One optimisation step on ``load``-ed inputs; returns the loss as a float."""

    @abc.abstractmethod
    def predict(self, inputs: Any) -> np.ndarray:
        """Logits for ``load``-ed inputs in eval mode, as a host array."""


class Backend(abc.ABC):
    """A backend plugin: probes its runtime and prepares sessions for artifacts."""

    name: ClassVar[str]
    options_type: ClassVar[type]
    #: Report columns for this backend's own figures (``metrics.backend.<key>`` from
    #: :meth:`Session.metrics`); copied into each record, so a report needs no plugin.
    report_columns: ClassVar[tuple[Column, ...]] = ()

    def __init__(self, options: Any) -> None:
        self.options = options

    @classmethod
    @abc.abstractmethod
    def probe(cls, options: Any) -> Availability:
        """Say whether the backend can run here, with a one-line reason when it cannot.

        Must not raise for a missing library or device: that is ``available=False``.
        """

    @abc.abstractmethod
    def capabilities(self) -> Capabilities:
        """Declare precisions, consumed formats, training and recipe support."""

    @abc.abstractmethod
    def prepare(self, artifact: Artifact, precision: str) -> Session:
        """Build a ready-to-run session for ``artifact`` at ``precision``."""

    def compress(self, artifact: Artifact, recipe: Any, calibration: Any) -> Artifact:
        """Realise a compression ``recipe`` (quantization, precision conversion) the way
        this backend does best, from ``calibration`` batches; return the new artifact.

        ``recipe`` is a :class:`harness.compression.recipes.Recipe` (``mode="auto"``: pick
        this backend's best int8 recipe). ``calibration`` is a
        :class:`harness.compression.calibration.Calibration`: real train batches, and the
        ``workdir`` the compressed files go into (the pipeline caches that folder). Put
        ``precision`` and the realised ``recipe`` details into the returned ``meta``.

        Backends list the recipes they realise in ``capabilities().recipes``; the default
        refuses, so a recipe is never silently skipped.
        """
        raise Unsupported(
            f"backend '{self.name}' has no compression recipe '{getattr(recipe, 'name', recipe)}'",
            "pick a backend that lists it in harness-backends, or drop the recipe",
        )

    def prepare_training(self, module: Any, plan: Any) -> TrainingSession:
        """Move ``module`` to the device and set up ``plan`` (optimizer, schedule, AMP).

        Only for backends whose capabilities declare ``training``; the default refuses.
        """
        raise Unsupported(
            f"backend '{self.name}' cannot train: it runs inference only",
            "train with backend=pytorch (or another backend that declares training)",
        )

    def check_generation(self) -> None:
        """Raise :class:`Unsupported` (one line) unless capabilities declare ``generation``."""
        if not self.capabilities().generation:
            raise Unsupported(
                f"backend '{self.name}' does not run text generation (capabilities().generation is False)",
                "use backend=pytorch, onnxruntime or openvino, or a plugin that implements prepare_generation",
            )

    def prepare_generation(self, source: "DecoderSource", plan: "GenerationPlan") -> "GenerationSession":
        """A :class:`harness.generation.session.GenerationSession` for the decoder ``source``
        (its module, or the ONNX / folder forms it builds on demand), prepared for ``plan``.

        Only for backends whose capabilities declare ``generation``; the default refuses.
        """
        self.check_generation()
        raise Unsupported(f"backend '{self.name}' declares generation but does not implement prepare_generation", "report it to the plugin's maintainers")

    def version(self) -> str:
        """The version of the library this backend drives, as its probe reports it
        (``probe().versions[name]``: the one source; caches key compressed artifacts by it).
        Do not override: under plugin API 1 an override filled the record."""
        return str(type(self).probe(self.options).versions.get(self.name, "unknown"))

    def device(self) -> str:
        """The device this backend targets, e.g. ``cpu`` or ``cuda:0``. The record's
        ``backend.device`` is the session's ``device`` (the one a run used); this is only
        for messages before a session exists (and, for plugin API 1, the record)."""
        return "cpu"

    def device_info(self) -> dict[str, Any]:
        """Accelerator fingerprint (name, memory, driver) for the record; empty on CPU."""
        return {}

    def check_precision(self, precision: str) -> None:
        """Raise :class:`Unsupported` unless ``precision`` is declared in capabilities."""
        supported = self.capabilities().precisions
        if precision not in supported:
            raise Unsupported(
                f"backend '{self.name}' does not support precision '{precision}'",
                f"use one of: {', '.join(sorted(supported))}",
            )
