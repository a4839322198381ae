"""PyTorch backend: eager (optionally ``torch.compile``) on the CPU.

Consumes the torch module directly. ``run`` executes under ``inference_mode`` and
returns when the CPU is done (CPU ops are synchronous).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.backend import Artifact, Availability, Backend, Capabilities, Session
from harness.config import choice, require
from harness.errors import Unavailable
from harness.hookspecs import hookimpl


@dataclass
class PyTorchOptions:
    """``backend=pytorch`` options."""

    device: str = "cpu"
    compile: bool = False
    compile_mode: str = "default"
    threads: int = 0

    def __post_init__(self) -> None:
        require(self.device == "cpu" or self.device.startswith("cuda"), "device", f"'{self.device}' is not cpu or cuda[:N]")
        choice(self.compile_mode, ("default", "reduce-overhead", "max-autotune"), "compile_mode")
        require(self.threads >= 0, "threads", f"must be >= 0, got {self.threads}")


class PyTorchSession(Session):
    """A torch module on a device; inputs are moved to the device by ``load``."""

    def __init__(self, module: Any, device: str, output_name: str) -> None:
        self.module = module
        self.device = device
        self.output_name = output_name

    def load(self, batch: Any) -> dict[str, Any]:
        import torch

        names = getattr(self.module, "input_names", None) or tuple(batch)
        return {n: torch.from_numpy(np.ascontiguousarray(batch[n])).to(self.device) for n in names if n in batch}

    def run(self, inputs: dict[str, Any]) -> Any:
        import torch

        with torch.inference_mode():
            return self.module(**inputs)

    def fetch(self, outputs: Any) -> dict[str, np.ndarray]:
        return {self.output_name: outputs.detach().float().cpu().numpy()}


class PyTorchBackend(Backend):
    name = "pytorch"
    options_type = PyTorchOptions

    @classmethod
    def probe(cls, options: PyTorchOptions) -> Availability:
        import torch

        versions = {cls.name: torch.__version__}
        if options.device.startswith("cuda") and not torch.cuda.is_available():
            return Availability(False, "no CUDA device visible (torch.cuda.is_available() is False)", versions=versions)
        return Availability(True, devices=(options.device,), versions=versions)

    def capabilities(self) -> Capabilities:
        return Capabilities(precisions=frozenset({"fp32"}), consumes=("torch",), tolerance={"fp32": 1e-4})

    def version(self) -> str:
        import torch

        return torch.__version__

    def device(self) -> str:
        return self.options.device

    def prepare(self, artifact: Artifact, precision: str) -> PyTorchSession:
        import torch

        self.check_precision(precision)
        if self.options.threads:
            torch.set_num_threads(self.options.threads)
        if artifact.module is None:
            raise Unavailable("pytorch backend needs a torch module artifact")
        module = artifact.module.to(self.options.device).eval()
        if self.options.compile:
            compiled = torch.compile(module, mode=self.options.compile_mode)
            compiled.input_names = getattr(module, "input_names", None)
            module = compiled
        return PyTorchSession(module, self.options.device, artifact.output_names[0])


@hookimpl
def harness_register_backends(registry: Any) -> None:
    registry.add_backend(PyTorchBackend)
