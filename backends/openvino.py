"""OpenVINO backend: reads the exported ONNX (or a compressed IR), compiles it for a device.

Devices are whatever ``ov.Core().available_devices`` lists (CPU here; GPU / NPU where
the drivers are present). Precision is OpenVINO's ``INFERENCE_PRECISION_HINT``:
fp32 sets ``f32`` *explicitly*, because on CPUs with AVX512-BF16 or AMX OpenVINO
otherwise runs bf16 and an "fp32" figure would be a bf16 one. bf16 / fp16 need the
device to list BF16 / FP16 in ``OPTIMIZATION_CAPABILITIES``; where it does not,
the run is ``unsupported`` (OpenVINO would quietly fall back to f32).

``performance_hint: throughput`` compiles for several streams and the session's
:meth:`OpenVINOSession.run_many` keeps an ``AsyncInferQueue`` of
``OPTIMAL_NUMBER_OF_INFER_REQUESTS`` requests in flight, the way ``benchmark_app
-hint throughput`` measures; single-stream latency always uses one synchronous request.
``static_shapes`` reshapes the model to the run's batch and sequence shape before
compiling (as ``benchmark_app -shape`` does), and compiled blobs are cached in the
harness cache (``CACHE_DIR``).

int8 comes from NNCF (:mod:`harness.compression.nncf_quant`): ``int8_static``
(post-training quantization on real calibration samples, transformer model type for
BERT) and ``int8_weights`` (weight-only). The float ops left in an int8 model run at
``f32`` too, so int8 figures are compared with an fp32, not a bf16, baseline.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from harness import cache
from harness.backend import Artifact, Availability, Backend, Capabilities, Session
from harness.config import choice, cores_bound, require
from harness.errors import HarnessError, Unavailable, Unsupported
from harness.hookspecs import hookimpl
from harness.serving.batching import BatchingOptions

HINTS = ("latency", "throughput")
#: INFERENCE_PRECISION_HINT per scenario precision.
INFERENCE_PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}
#: OPTIMIZATION_CAPABILITIES entry a device must list to honour the hint.
CAPABILITY = {"bf16": "BF16", "fp16": "FP16"}
RECIPES = frozenset({"int8_static", "int8_weights"})
AUTO_MODE = {"transformer": "static", "cnn": "static"}
#: Max abs logit difference against eager fp32 (int8: a sanity bound; the accuracy gate judges).
TOLERANCE = {"fp32": 1e-3, "bf16": 0.25, "fp16": 5e-2, "int8": 1.0}
VIRTUAL_DEVICES = ("AUTO", "MULTI", "HETERO", "BATCH")


@dataclass
class OpenVINOOptions:
    """``backend=openvino`` options."""

    device: str = "CPU"
    performance_hint: str = "latency"
    num_requests: int = 0
    num_streams: int = cores_bound()  # more than the cores present are clamped (preflight)
    threads: int = cores_bound()
    static_shapes: bool = True
    model_cache: bool = True
    generation_engine: str = "auto"  # LLMs: genai (LLMPipeline) | stateful (InferRequest loop) | auto
    serving: BatchingOptions = field(default_factory=BatchingOptions)  # LLM serving: ContinuousBatchingPipeline sizing

    def __post_init__(self) -> None:
        require(bool(self.device), "device", "must name an OpenVINO device, e.g. CPU, GPU, NPU or AUTO")
        choice(self.generation_engine, ("auto", "genai", "stateful"), "generation_engine")
        choice(self.performance_hint, HINTS, "performance_hint")
        require(self.num_requests >= 0, "num_requests", f"must be >= 0 (0 = OpenVINO's optimal number), got {self.num_requests}")
        require(self.num_streams >= 0, "num_streams", f"must be >= 0 (0 = from the hint), got {self.num_streams}")
        require(self.threads >= 0, "threads", f"must be >= 0 (0 = all cores), got {self.threads}")


def device_family(device: str) -> str:
    """``GPU.1`` -> ``GPU``; ``AUTO:GPU,CPU`` -> ``AUTO``."""
    return device.split(":")[0].split(".")[0].upper()


def compile_config(options: OpenVINOOptions, precision: str, cache_dir: str | None) -> dict[str, Any]:
    """The ``compile_model`` properties for ``precision`` (string keys, as benchmark_app takes)."""
    config: dict[str, Any] = {
        "PERFORMANCE_HINT": options.performance_hint.upper(),
        "INFERENCE_PRECISION_HINT": INFERENCE_PRECISION[precision],
    }
    if options.num_streams:
        config["NUM_STREAMS"] = str(options.num_streams)
    if options.threads:
        config["INFERENCE_NUM_THREADS"] = options.threads
    if options.num_requests and options.performance_hint == "throughput":
        config["PERFORMANCE_HINT_NUM_REQUESTS"] = options.num_requests
    if cache_dir:
        config["CACHE_DIR"] = cache_dir
    return config


class OpenVINOSession(Session):
    """One compiled model: a synchronous request for ``run``, a request pool for ``run_many``."""

    def __init__(self, compiled: Any, device: str, requests: int, config: dict[str, Any]) -> None:
        self.compiled = compiled
        self.device = device
        self.request = compiled.create_infer_request()
        self.input_names = [port.any_name for port in compiled.inputs]
        self.output_names = [port.any_name for port in compiled.outputs]
        self.in_flight = max(1, requests)
        self.config = config
        self._queue: Any = None

    def load(self, batch: Any) -> dict[str, np.ndarray]:
        return {name: np.ascontiguousarray(batch[name]) for name in self.input_names}

    def run(self, inputs: dict[str, np.ndarray]) -> Any:
        # share_inputs/outputs: zero-copy; fetch copies the outputs out before the next call.
        return self.request.infer(inputs, share_inputs=True, share_outputs=True)

    def fetch(self, outputs: Any) -> dict[str, np.ndarray]:
        return {name: np.array(outputs[i], copy=True) for i, name in enumerate(self.output_names)}

    def run_many(self, inputs: Any, min_calls: int, min_seconds: float) -> tuple[int, float]:
        """Keep ``in_flight`` asynchronous requests busy until both limits are reached."""
        import openvino as ov

        if self._queue is None:
            self._queue = ov.AsyncInferQueue(self.compiled, self.in_flight)
        queue = self._queue
        clock = time.perf_counter
        started = clock()
        calls = 0
        while calls < min_calls or clock() - started < min_seconds:
            queue.start_async(inputs, share_inputs=True)  # blocks until a request is idle
            calls += 1
        queue.wait_all()
        return calls, clock() - started

    def close(self) -> None:
        self._queue = None
        self.request = None
        self.compiled = None


class OpenVINOBackend(Backend):
    name = "openvino"
    options_type = OpenVINOOptions

    def __init__(self, options: OpenVINOOptions) -> None:
        super().__init__(options)
        self._core: Any = None
        self._optimization_capabilities: list[str] | None = None

    @property
    def core(self) -> Any:
        if self._core is None:
            import openvino as ov

            self._core = ov.Core()
        return self._core

    @classmethod
    def probe(cls, options: OpenVINOOptions) -> Availability:
        try:
            import openvino as ov
        except ImportError as exc:
            return Availability(False, f"openvino is not installed ({exc}); pip install openvino")
        versions = {cls.name: ov.__version__.split("-")[0]}
        try:
            devices = tuple(ov.Core().available_devices)
        except Exception as exc:  # a broken plugin or driver
            return Availability(False, f"openvino could not list devices ({type(exc).__name__}: {exc})", versions=versions)
        family = device_family(options.device)
        present = {device_family(d) for d in devices} | set(VIRTUAL_DEVICES)
        if family not in present:
            return Availability(
                False, f"OpenVINO device '{options.device}' not present (available: {', '.join(devices) or 'none'})", devices=devices, versions=versions
            )
        return Availability(True, devices=devices, versions=versions)

    def capabilities(self) -> Capabilities:
        """fp32 and int8 always; bf16 / fp16 where the device computes them."""
        precisions = {"fp32", "int8"} | {p for p in CAPABILITY if self.device_computes(p)}
        return Capabilities(
            precisions=frozenset(precisions), consumes=("onnx",), recipes=RECIPES, tolerance={p: TOLERANCE[p] for p in precisions}, generation=True
        )

    def prepare_generation(self, source: Any, plan: Any) -> Any:
        """Decoder LLMs: a stateful IR built from the decoder export, run by openvino-genai's
        LLMPipeline or a stateful InferRequest (:mod:`harness.backends.openvino_generation`)."""
        from harness.backends import openvino_generation

        compute = openvino_generation.compute_precision(plan)
        properties = compile_config(self.options, compute, None) if compute in openvino_generation.PRECISION else {}
        return openvino_generation.prepare(self, source, plan, properties)

    def prepare_serving(self, model: Any, plan: Any) -> Any:
        """LLM serving: openvino-genai's ContinuousBatchingPipeline (:mod:`harness.backends.openvino_serving`);
        ``backend.serving.mode=fifo``: one request at a time through the generation session."""
        if self.options.serving.mode == "fifo":
            from harness.serving.inprocess import fifo_session

            return fifo_session(self, model, plan)
        from harness.backends import openvino_generation, openvino_serving

        precision = "fp32" if plan.precision == "auto" else plan.precision
        if precision not in openvino_generation.PRECISION:
            raise Unsupported(f"openvino serving runs fp32, bf16 or fp16, not {precision}", "use scenario.precision=fp32")
        self.check_device_precision(precision)
        return openvino_serving.prepare(
            self, model, replace(plan, precision=precision), compile_config(self.options, precision, None), device_family(self.options.device)
        )

    def version(self) -> str:
        import openvino as ov

        return ov.__version__.split("-")[0]

    def device(self) -> str:
        return self.options.device

    def device_info(self) -> dict[str, Any]:
        family = device_family(self.options.device)
        if family == "CPU" or family in VIRTUAL_DEVICES:
            return {}
        try:
            return {"name": str(self.core.get_property(self.options.device, "FULL_DEVICE_NAME")), "kind": family}
        except Exception:
            return {"kind": family}

    def optimization_capabilities(self) -> list[str]:
        """The device's ``OPTIMIZATION_CAPABILITIES`` (read once)."""
        if self._optimization_capabilities is None:
            self._optimization_capabilities = list(self.core.get_property(self.options.device, "OPTIMIZATION_CAPABILITIES"))
        return self._optimization_capabilities

    def device_computes(self, precision: str) -> bool:
        """Whether the device lists the compute ``precision`` needs (virtual devices: assumed)."""
        needed = CAPABILITY.get(precision)
        if needed is None or device_family(self.options.device) in VIRTUAL_DEVICES:
            return True
        return needed in self.optimization_capabilities()

    def check_precision(self, precision: str) -> None:
        """The base check, with the device's reason when it lacks bf16 / fp16 compute."""
        self.check_device_precision(precision)
        super().check_precision(precision)

    def check_device_precision(self, precision: str) -> None:
        """Refuse bf16/fp16 where the device lacks them: OpenVINO would silently run f32."""
        if not self.device_computes(precision):
            needed = CAPABILITY[precision]
            capabilities = self.optimization_capabilities()
            raise Unsupported(
                f"OpenVINO {self.options.device} has no {needed} compute (OPTIMIZATION_CAPABILITIES: {', '.join(capabilities)}); "
                f"a {precision} hint would run f32",
                f"run {precision} on a device that lists {needed}, or use precision fp32/int8",
            )

    def compress(self, artifact: Artifact, recipe: Any, calibration: Any) -> Artifact:
        """NNCF int8 on the ONNX read as an OpenVINO model; saved as IR in ``calibration.workdir``."""
        import openvino as ov

        from harness.compression import nncf_quant
        from harness.compression.recipes import resolve_auto

        recipe = resolve_auto(recipe, AUTO_MODE)
        if recipe.name not in RECIPES or artifact.onnx_path is None:
            return super().compress(artifact, recipe, calibration)
        model = self.core.read_model(str(artifact.onnx_path))
        compressed, details = nncf_quant.realise(model, recipe, calibration.batches)
        xml = Path(calibration.workdir) / "model.xml"
        ov.save_model(compressed, str(xml), compress_to_fp16=False)  # keep fp32 weights fp32
        meta = {**artifact.meta, "precision": "int8", "recipe": details, "openvino_ir": xml}
        return Artifact(artifact.name, artifact.input_names, artifact.output_names, meta=meta)

    def read(self, artifact: Artifact) -> Any:
        """The ``ov.Model`` of ``artifact`` (an IR from compress, else the ONNX), reshaped if asked."""
        path = artifact.meta.get("openvino_ir") or artifact.onnx_path
        if path is None:
            raise Unsupported("openvino consumes ONNX or OpenVINO IR; this artifact has neither")
        model = self.core.read_model(str(path))
        shapes = artifact.meta.get("sample_shape")
        if self.options.static_shapes and shapes:
            batch = int(artifact.meta.get("batch_size") or next(iter(shapes.values()))[0])
            names = {name for port in model.inputs for name in port.get_names()}
            model.reshape({name: [batch, *shape[1:]] for name, shape in shapes.items() if name in names})
        return model

    def prepare(self, artifact: Artifact, precision: str) -> OpenVINOSession:
        self.check_precision(precision)
        if precision == "int8" and artifact.meta.get("precision") != "int8":
            raise Unsupported("openvino int8 runs an NNCF-quantized model and this artifact is not one", "compress it first with int8_static or int8_weights")
        model = self.read(artifact)
        cache_dir = str(cache.entry("openvino", "model-cache")) if self.options.model_cache else None
        config = compile_config(self.options, precision, cache_dir)
        try:
            compiled = self.core.compile_model(model, self.options.device, config)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if "device" in first.lower() and "not" in first.lower():
                raise Unavailable(f"OpenVINO could not use device {self.options.device}: {first}") from exc
            raise HarnessError(f"OpenVINO could not compile the model for {self.options.device}: {first}") from exc
        requests = self.options.num_requests or int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        return OpenVINOSession(compiled, self.options.device, requests, config)


@hookimpl
def harness_register_backends(registry: Any) -> None:
    registry.add_backend(OpenVINOBackend)
