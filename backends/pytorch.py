"""PyTorch backend: eager or ``torch.compile``, on the CPU or a CUDA device.

Consumes the torch module directly. fp32 runs the module as is; ``tf32`` allows
TensorFloat-32 matmuls on CUDA; ``bf16``/``fp16`` run under ``torch.autocast``. On
CUDA the session times calls with CUDA events on its stream and returns only after
the stream is synchronised; ``cuda_graphs=true`` captures the call once and replays
it. The CUDA paths are written against the documented PyTorch API and run by
``scripts/device-check.sh`` on a borrowed GPU; on the CPU-only development machine
they report ``unavailable``.
"""

from __future__ import annotations

import copy

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.backend import Artifact, Availability, Backend, Capabilities, Session
from harness.config import choice, cores_bound, require
from harness.errors import Unsupported
from harness.hardware import cuda_device_info
from harness.hookspecs import hookimpl
from harness.serving.batching import BatchingOptions
from harness.timing import CudaEventTimer, WallClockTimer
from harness.training.options import STRATEGIES
from harness.training.parallel import LOW_PRECISION as AUTOCAST
from harness.training.torch_session import TorchTrainingSession

#: Max abs logit difference against eager fp32 that each precision is allowed.
TOLERANCE = {"fp32": 1e-4, "tf32": 5e-2, "bf16": 0.25, "fp16": 0.05, "int8": 0.5}


@dataclass
class PyTorchOptions:
    """``backend=pytorch`` options."""

    device: str = "cpu"
    compile: bool = False
    compile_mode: str = "default"
    cuda_graphs: bool = False
    threads: int = cores_bound()  # more than the cores present are clamped (preflight)
    serving: BatchingOptions = field(default_factory=BatchingOptions)  # LLM serving: transformers continuous batching

    def __post_init__(self) -> None:
        require(self.device == "cpu" or self.device.startswith("cuda"), "device", f"'{self.device}' is not cpu or cuda[:N]")
        choice(self.compile_mode, ("default", "reduce-overhead", "max-autotune"), "compile_mode")
        require(not self.cuda_graphs or self.device.startswith("cuda"), "cuda_graphs", "needs backend.device=cuda")
        require(self.threads >= 0, "threads", f"must be >= 0, got {self.threads}")


def is_cuda(device: str) -> bool:
    return device.startswith("cuda")


def autocast_dtype(precision: str) -> Any:
    """The ``torch`` dtype autocast runs ``precision`` in; None for fp32."""
    import torch

    return getattr(torch, AUTOCAST[precision]) if precision in AUTOCAST else None


def autocast(dtype: Any, cuda: bool) -> Any:
    """``torch.autocast`` to ``dtype`` on the CPU or CUDA; a null context for fp32 (``dtype`` None)."""
    import contextlib

    import torch

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda" if cuda else "cpu", dtype=dtype)


class PyTorchSession(Session):
    """A torch module on a device; ``load`` moves inputs there, outside the timed region."""

    def __init__(self, module: Any, device: str, output_name: str, precision: str, cuda_graphs: bool = False) -> None:
        import torch

        self.module = module
        self.device = device
        self.output_name = output_name
        self.autocast_dtype = autocast_dtype(precision)
        self.cuda = is_cuda(device)
        self.stream = torch.cuda.current_stream(device) if self.cuda else None
        self.timer = CudaEventTimer(self.stream) if self.cuda else WallClockTimer()
        self.cuda_graphs = cuda_graphs
        self.graph: Any = None
        self.graph_output: Any = None

    def load(self, batch: Any) -> dict[str, Any]:
        import torch

        names = getattr(self.module, "input_names", None) or tuple(batch)
        inputs = {n: torch.from_numpy(np.ascontiguousarray(batch[n])).to(self.device) for n in names if n in batch}
        if self.cuda_graphs:
            self._capture(inputs)
        return inputs

    def _forward(self, inputs: dict[str, Any]) -> Any:
        import torch

        with torch.inference_mode(), autocast(self.autocast_dtype, self.cuda):
            return self.module(**inputs)

    def _capture(self, inputs: dict[str, Any]) -> None:
        """Capture one call into a CUDA graph on static ``inputs`` (warm-up on a side stream first)."""
        import torch

        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(3):
                self._forward(inputs)
        torch.cuda.current_stream(self.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.graph_output = self._forward(inputs)

    def run(self, inputs: dict[str, Any]) -> Any:
        if self.graph is not None:
            self.graph.replay()
            output = self.graph_output
        else:
            output = self._forward(inputs)
        if self.cuda:
            self.timer.mark_done()
            self.stream.synchronize()
        return output

    def fetch(self, outputs: Any) -> dict[str, np.ndarray]:
        return {self.output_name: outputs.detach().float().cpu().numpy()}

    def memory(self) -> dict[str, float]:
        if not self.cuda:
            return {}
        import torch

        figures = {"peak_allocated_mib": torch.cuda.max_memory_allocated(self.device) / 2**20}
        try:
            import pynvml

            pynvml.nvmlInit()
            index = torch.device(self.device).index or 0
            info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index))
            figures["nvml_used_mib"] = info.used / 2**20
        except Exception:  # NVML is optional: absent library or driver just means no figure
            pass
        return figures


class PyTorchTrainingSession(TorchTrainingSession):
    """A module being trained: the shared torch step, plus AMP and the parallel strategies.

    Mixed precision is ``torch.autocast`` (bf16 on the CPU; bf16/fp16 on CUDA), fp16
    through a grad scaler; the loss is computed in fp32 on the float logits. On CUDA
    steps are timed with CUDA events and ``train_step`` returns once the stream is done
    (copying the loss to the host syncs), like inference calls. A world size above 1
    joins the torchrun process group (gloo on the CPU, nccl on CUDA) and spreads the
    module with the plan's strategy (:mod:`harness.training.parallel`: DDP, FSDP2, tensor
    or pipeline parallel; fsdp realises mixed precision with its own policy). The session
    also accounts this rank's memory and, on the plan's profiled steps, splits step time
    into compute and communication (:mod:`harness.training.accounting`).
    """

    def __init__(self, module: Any, plan: Any, device: str, compile_mode: str | None = None) -> None:
        import torch

        from harness.training.accounting import StepProfiler
        from harness.training.strategies import strategy_for

        torch.manual_seed(plan.seed + plan.world.dp_rank)  # dropout differs across replicas, not within one
        self.device = device
        self.cuda = is_cuda(device)
        self.strategy = strategy_for(plan, device)
        self.collective_eval = self.strategy.collective_eval
        super().__init__(module, plan, device)
        if compile_mode is not None:
            self.model = torch.compile(self.model, mode=compile_mode)
        self.autocast_dtype = getattr(torch, self.strategy.autocast_dtype()) if self.strategy.autocast_dtype() else None
        self.scaler = torch.amp.GradScaler("cuda") if plan.precision == "fp16" else None
        self.stream = torch.cuda.current_stream(device) if self.cuda else None
        self.timer = CudaEventTimer(self.stream) if self.cuda else WallClockTimer()
        self.profiler = StepProfiler(self.cuda)
        self.activations_mib: float | None = None
        self.state_bytes: dict[str, int] = {}

    def _spread(self, module: Any) -> tuple[Any, Any]:
        return self.strategy.setup(module)

    def _gradient_sync(self, update: bool) -> Any:
        return self.strategy.gradient_sync(self.model, update)

    def _forward_backward(self, inputs: dict[str, Any], update: bool) -> Any:
        custom = getattr(self.strategy, "forward_backward", None)  # pipeline: a schedule step
        return custom(inputs, update, self._autocast()) if custom else super()._forward_backward(inputs, update)

    def _clip(self) -> None:
        self.strategy.clip(self.module, self.plan.grad_clip)

    def _observe(self) -> Any:
        """Step 1's first micro-batch: peak saved activations; profiled steps: the time split."""
        import contextlib

        from harness.training.accounting import SavedActivations

        step = (self.micro_batches - 1) // self.plan.grad_accum_steps + 1
        stack = contextlib.ExitStack()
        if self.micro_batches == 1:
            meter = stack.enter_context(SavedActivations(self.module.parameters()).measure(self.module))
            stack.callback(lambda: setattr(self, "activations_mib", meter.peak_mib))
        if step in self.plan.parallel.profile_steps:
            stack.enter_context(self.profiler.profile())
        return stack

    def _before_zero_grad(self) -> None:
        from harness.training.accounting import state_bytes

        if not self.state_bytes:  # the first update: sizes do not change after it
            self.state_bytes = state_bytes(self.module, self.optimizer)

    def predict(self, inputs: dict[str, Any]) -> np.ndarray:
        custom = getattr(self.strategy, "predict", None)  # pipeline: the stages in turn
        if custom is None:
            return super().predict(inputs)
        return custom(inputs, self._autocast()).numpy()

    def _autocast(self) -> Any:
        return autocast(self.autocast_dtype, self.cuda)

    def load(self, batch: Any) -> dict[str, Any]:
        import torch

        return {k: torch.from_numpy(np.ascontiguousarray(v)).to(self.device) for k, v in batch.items()}

    def _finish_step(self) -> None:
        if self.cuda:
            self.timer.mark_done()

    def memory(self) -> dict[str, float]:
        """Process figures (peak RSS, or CUDA's peak allocation) and this rank's accounted model
        state (parameters, gradients, optimizer state) and step-1 saved activations."""
        from harness.training.accounting import state_mib

        figures = {**process_memory(self.device if self.cuda else None), **state_mib(self.state_bytes)}
        figures["activations_mib"] = self.activations_mib
        return figures

    def parallel_metrics(self) -> dict[str, Any]:
        """How the model was spread, and every rank's memory and time split (a collective)."""
        plan = self.plan
        mine = {
            "rank": plan.world.rank,
            **self.memory(),
            **{k: v for k, v in self.profiler.summary(plan.parallel.profile_steps).items() if k in ("communication_ms", "compute_ms", "communication_share")},
        }
        return {
            "strategy": self.strategy.name if plan.world.size > 1 else plan.parallel.strategy,
            "mixed_precision": self.strategy.describe_precision(),
            "per_rank": self.strategy.gather(mine),
            "step_breakdown": self.profiler.summary(plan.parallel.profile_steps),
        }

    def global_losses(self, losses: list[float]) -> list[float]:
        """Each step's loss averaged over the replicas (rank 0 alone saw its own slice)."""
        return self.strategy.global_mean(losses)

    def full_state_dict(self) -> Any:
        """The whole model's weights on rank 0 when the module holds only a part (a collective)."""
        return self.strategy.full_state_dict(self.module)

    def close(self) -> None:
        """Leave the process group this session joined, after every rank got here; a
        distributed session then stays alive until the process exits (freeing it can
        deadlock in gloo: :func:`harness.training.parallel.keep_until_exit`)."""
        distributed = self.strategy.owns_group
        self.strategy.close()
        if distributed:
            from harness.training.parallel import keep_until_exit

            keep_until_exit(self)


def process_memory(cuda_device: str | None) -> dict[str, float]:
    """CUDA's peak allocation on ``cuda_device``, else the process's RSS and peak RSS (MiB)."""
    if cuda_device is not None:
        import torch

        return {"peak_allocated_mib": torch.cuda.max_memory_allocated(cuda_device) / 2**20}
    from harness.hardware import host_memory_mib

    return host_memory_mib()


class PyTorchBackend(Backend):
    name = "pytorch"
    options_type = PyTorchOptions

    @classmethod
    def probe(cls, options: PyTorchOptions) -> Availability:
        from importlib import metadata

        # Read from the package metadata, not ``import torch`` (1-1.5 s): harness-backends
        # probes every config and must answer quickly. A CPU run imports torch anyway.
        version = metadata.version("torch")
        versions = {cls.name: version}
        if is_cuda(options.device):
            if version.endswith("+cpu"):
                return Availability(
                    False, f"no CUDA device visible: this torch build is CPU-only ({version}); install a CUDA build of torch", versions=versions
                )
            import torch

            if not torch.cuda.is_available():
                return Availability(False, "no CUDA device visible (torch.cuda.is_available() is False)", versions=versions)
            count = torch.cuda.device_count()
            index = torch.device(options.device).index or 0
            if index >= count:
                return Availability(False, f"{options.device} requested but only {count} CUDA device(s) visible", versions=versions)
            return Availability(True, devices=tuple(f"cuda:{i}" for i in range(count)), versions=versions)
        return Availability(True, devices=("cpu",), versions=versions)

    def capabilities(self) -> Capabilities:
        cuda = is_cuda(self.options.device)
        # int8: torch.ao dynamic quantization has CPU kernels only (fbgemm/x86, qnnpack).
        precisions = {"fp32", "bf16", "fp16"} | ({"tf32"} if cuda else {"int8"})
        return Capabilities(
            precisions=frozenset(precisions),
            consumes=("torch",),
            training=True,
            generation=True,
            recipes=frozenset() if cuda else frozenset({"int8_dynamic"}),
            tolerance={p: TOLERANCE[p] for p in precisions},
            training_strategies=frozenset(STRATEGIES),
        )

    def compress(self, artifact: Artifact, recipe: Any, calibration: Any) -> Artifact:
        """int8: ``torch.ao.quantization.quantize_dynamic`` on a copy of the module (CPU)."""
        from harness.compression import torch_quant
        from harness.compression.recipes import resolve_auto

        if is_cuda(self.options.device) or artifact.module is None:
            return super().compress(artifact, recipe, calibration)
        recipe = resolve_auto(recipe, {"transformer": "dynamic", "cnn": "dynamic"})
        module, details = torch_quant.realise(artifact.module, recipe)
        meta = {**artifact.meta, "precision": "int8", "recipe": details, "size_bytes": details["size_bytes"]}
        return Artifact(artifact.name, artifact.input_names, artifact.output_names, module=module, meta=meta)

    def version(self) -> str:
        import torch

        return torch.__version__

    def device(self) -> str:
        return self.options.device

    def device_info(self) -> dict[str, Any]:
        if not is_cuda(self.options.device):
            return {}
        import torch

        return cuda_device_info(torch.device(self.options.device).index or 0)

    def prepare(self, artifact: Artifact, precision: str) -> PyTorchSession:
        import torch

        self.check_precision(precision)
        if self.options.threads:
            torch.set_num_threads(self.options.threads)
        if artifact.module is None:
            raise Unsupported("the pytorch backend needs a torch module artifact")
        if precision == "int8" and artifact.meta.get("precision") != "int8":
            raise Unsupported("pytorch int8 runs a quantized module", "compress it first with the int8_dynamic recipe")
        if is_cuda(self.options.device):
            torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
            torch.backends.cudnn.allow_tf32 = precision == "tf32"
            torch.cuda.reset_peak_memory_stats(self.options.device)
        # A copy on CUDA: the scenario keeps the original on the CPU for its eager reference.
        source = copy.deepcopy(artifact.module) if is_cuda(self.options.device) else artifact.module
        module = source.to(self.options.device).eval()
        if self.options.compile:
            compiled = torch.compile(module, mode=self.options.compile_mode)
            compiled.input_names = getattr(module, "input_names", None)
            module = compiled
        return PyTorchSession(module, self.options.device, artifact.output_names[0], precision, self.options.cuda_graphs)

    def prepare_generation(self, source: Any, plan: Any) -> Any:
        """Decoder LLMs: the transformers model with its KV cache in the shared token loop
        (:mod:`harness.backends.pytorch_generation`; ``compile=true``: static cache + torch.compile)."""
        import torch

        from harness.backends import pytorch_generation

        if self.options.threads:
            torch.set_num_threads(self.options.threads)
        compile_mode = self.options.compile_mode if self.options.compile else None
        return pytorch_generation.prepare(source, plan, self.options.device, compile_mode)

    def prepare_serving(self, model: Any, plan: Any) -> Any:
        """LLM serving: transformers' continuous batching (:mod:`harness.backends.pytorch_serving`);
        ``backend.serving.mode=fifo``: one request at a time through the generation session."""
        import torch

        if self.options.threads:
            torch.set_num_threads(self.options.threads)
        if self.options.serving.mode == "fifo":
            from harness.serving.inprocess import fifo_session

            return fifo_session(self, model, plan)
        from harness.backends import pytorch_serving

        return pytorch_serving.prepare(self, model, plan)

    def prepare_training(self, module: Any, plan: Any) -> PyTorchTrainingSession:
        """Training with the plan's optimizer, schedule and precision; DDP when its world is > 1."""
        import torch

        self.check_precision(plan.precision)
        cuda = is_cuda(self.options.device)
        if plan.precision == "fp16" and not cuda:
            raise Unsupported(
                "fp16 mixed-precision training needs CUDA; the CPU's mixed precision is bf16", "use scenario.precision=bf16 on the CPU, or backend.device=cuda"
            )
        if self.options.cuda_graphs:
            raise Unsupported("backend.cuda_graphs captures inference calls, not training steps", "drop backend.cuda_graphs for training")
        strategy = plan.parallel.strategy if plan.world.size > 1 else "ddp"
        if plan.precision == "fp16" and strategy not in ("ddp", "fsdp"):
            raise Unsupported(
                f"fp16 loss scaling is not wired for strategy {strategy} (the scaler's overflow check would have to agree across tensor or pipeline shards)",
                "use scenario.precision=bf16, or strategy=ddp/fsdp for fp16",
            )
        if self.options.compile and strategy == "pp":
            raise Unsupported("backend.compile wraps the model's forward, which a pipeline schedule never calls", "drop backend.compile for strategy=pp")
        if self.options.threads:
            torch.set_num_threads(self.options.threads)
        device = self.options.device
        if cuda:
            if plan.world.size > 1:
                device = f"cuda:{plan.world.local_rank}"
            torch.cuda.set_device(device)
            torch.cuda.reset_peak_memory_stats(device)
        compile_mode = self.options.compile_mode if self.options.compile else None
        return PyTorchTrainingSession(module, plan, device, compile_mode)


@hookimpl
def harness_register_backends(registry: Any) -> None:
    registry.add_backend(PyTorchBackend)
