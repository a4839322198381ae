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

from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.backend import Artifact, Availability, Backend, Capabilities, Session
from harness.config import choice, require
from harness.errors import Unsupported
from harness.hardware import cuda_device_info
from harness.hookspecs import hookimpl
from harness.timing import CudaEventTimer, WallClockTimer

AUTOCAST = {"bf16": "bfloat16", "fp16": "float16"}
#: Max abs logit difference against eager fp32 that each precision is allowed.
TOLERANCE = {"fp32": 1e-4, "tf32": 5e-2, "bf16": 0.25, "fp16": 0.05}


@dataclass
class PyTorchOptions:
    """``backend=pytorch`` options."""

    device: str = "cpu"
    compile: bool = False
    compile_mode: str = "default"
    cuda_graphs: bool = False
    threads: int = 0

    def __post_init__(self) -> None:
        require(self.device == "cpu" or self.device.startswith("cuda"), "device", f"'{self.device}' is not cpu or cuda[:N]")
        choice(self.compile_mode, ("default", "reduce-overhead", "max-autotune"), "compile_mode")
        require(not self.cuda_graphs or self.device.startswith("cuda"), "cuda_graphs", "needs backend.device=cuda")
        require(self.threads >= 0, "threads", f"must be >= 0, got {self.threads}")


def is_cuda(device: str) -> bool:
    return device.startswith("cuda")


class PyTorchSession(Session):
    """A torch module on a device; ``load`` moves inputs there, outside the timed region."""

    def __init__(self, module: Any, device: str, output_name: str, precision: str, cuda_graphs: bool = False) -> None:
        import torch

        self.module = module
        self.device = device
        self.output_name = output_name
        self.autocast = getattr(torch, AUTOCAST[precision]) if precision in AUTOCAST else None
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

        with torch.inference_mode():
            if self.autocast is None:
                return self.module(**inputs)
            with torch.autocast(device_type="cuda" if self.cuda else "cpu", dtype=self.autocast):
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


class PyTorchBackend(Backend):
    name = "pytorch"
    options_type = PyTorchOptions

    @classmethod
    def probe(cls, options: PyTorchOptions) -> Availability:
        import torch

        versions = {cls.name: torch.__version__}
        if is_cuda(options.device):
            if not torch.cuda.is_available():
                return Availability(False, "no CUDA device visible (torch.cuda.is_available() is False)", versions=versions)
            count = torch.cuda.device_count()
            index = torch.device(options.device).index or 0
            if index >= count:
                return Availability(False, f"{options.device} requested but only {count} CUDA device(s) visible", versions=versions)
            return Availability(True, devices=tuple(f"cuda:{i}" for i in range(count)), versions=versions)
        return Availability(True, devices=("cpu",), versions=versions)

    def capabilities(self) -> Capabilities:
        precisions = {"fp32", "bf16", "fp16"} | ({"tf32"} if is_cuda(self.options.device) else set())
        return Capabilities(
            precisions=frozenset(precisions),
            consumes=("torch",),
            training=True,
            tolerance={p: TOLERANCE[p] for p in precisions},
        )

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
        if is_cuda(self.options.device):
            torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
            torch.backends.cudnn.allow_tf32 = precision == "tf32"
            torch.cuda.reset_peak_memory_stats(self.options.device)
        module = artifact.module.to(self.options.device).eval()
        if self.options.compile:
            compiled = torch.compile(module, mode=self.options.compile_mode)
            compiled.input_names = getattr(module, "input_names", None)
            module = compiled
        return PyTorchSession(module, self.options.device, artifact.output_names[0], precision, self.options.cuda_graphs)


@hookimpl
def harness_register_backends(registry: Any) -> None:
    registry.add_backend(PyTorchBackend)
