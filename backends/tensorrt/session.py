"""A deserialized TensorRT engine run on one CUDA stream through the named-tensor API.

Written against the documented TensorRT 10.x/11.x runtime API and not yet run on a GPU
here: ``trt.Runtime(logger).deserialize_cuda_engine(bytes)``; the engine's
``num_io_tensors`` / ``get_tensor_name`` / ``get_tensor_mode`` / ``get_tensor_dtype``;
an execution context's ``set_input_shape``, ``get_tensor_shape``,
``set_tensor_address`` and ``execute_async_v3(stream_handle)``.

Device buffers are torch CUDA tensors and timing uses ``torch.cuda.Event``, so the
backend needs no pycuda / cuda-python. ``tensorrt`` and ``torch`` are imported inside
functions only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from harness.backend import Batch, Session
from harness.errors import ConfigError, HarnessError, Unsupported
from harness.timing import CudaEventTimer

from .plan import PrecisionPlan

# trt.DataType member name -> torch dtype attribute name
TRT_TO_TORCH_DTYPE = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "UINT8": "uint8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
    "FP8": "float8_e4m3fn",
}


def torch_dtype_name(trt_dtype: Any) -> str:
    """torch dtype name for a ``trt.DataType`` (or its member name)."""
    name = getattr(trt_dtype, "name", str(trt_dtype)).split(".")[-1]
    try:
        return TRT_TO_TORCH_DTYPE[name]
    except KeyError:
        raise Unsupported(f"tensorrt I/O tensor type {name} has no torch equivalent here") from None


def deserialize_engine(trt: Any, logger: Any, serialized: bytes, engine_path: Path) -> tuple[Any, Any]:
    """``(engine, runtime)`` for the serialized engine read from ``engine_path``.

    The runtime is returned too because the engine must not outlive it.
    """
    runtime = trt.Runtime(logger)
    engine = runtime.deserialize_cuda_engine(serialized)
    if engine is None:
        raise HarnessError(f"tensorrt could not deserialize the engine at {engine_path}; delete it to rebuild")
    return engine, runtime


# --- session -------------------------------------------------------------------------


@dataclass
class _Bound:
    """Device tensors for one loaded batch (inputs copied, outputs allocated)."""

    inputs: dict[str, Any]
    outputs: dict[str, Any]


class TensorRTSession(Session):
    """A deserialized engine with one execution context on one CUDA stream.

    Written against the documented TensorRT 10.x/11.x API; not yet run on a GPU here.
    ``run`` returns the session's output tensors, which the next ``run`` overwrites;
    :meth:`fetch` copies them to host.
    """

    timer: CudaEventTimer

    def __init__(self, engine: Any, runtime: Any, device_index: int, plan: PrecisionPlan) -> None:
        import tensorrt as trt
        import torch

        self.device = f"cuda:{device_index}"
        self.plan = plan
        self._torch = torch
        self._runtime = runtime  # the engine must not outlive its runtime
        self._engine = engine
        self._context = engine.create_execution_context()
        if self._context is None:
            raise HarnessError("tensorrt could not create an execution context (out of device memory?)")
        self._stream = torch.cuda.Stream(device=self.device)
        self.timer = CudaEventTimer(self._stream)
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._dtypes = {n: getattr(torch, torch_dtype_name(engine.get_tensor_dtype(n))) for n in names}
        self._current: _Bound | None = None
        torch.cuda.reset_peak_memory_stats(self.device)

    def load(self, batch: Batch) -> _Bound:
        torch = self._torch
        missing = [n for n in self._inputs if n not in batch]
        if missing:
            raise ConfigError(f"the batch lacks engine input(s) {missing}; it has {sorted(batch)}")
        with torch.cuda.stream(self._stream):
            inputs = {}
            for name in self._inputs:
                array = np.ascontiguousarray(batch[name])
                host = torch.from_numpy(array if array.flags.writeable else array.copy())
                inputs[name] = host.to(self.device, dtype=self._dtypes[name], non_blocking=False).contiguous()
                if not self._context.set_input_shape(name, tuple(inputs[name].shape)):
                    raise ConfigError(
                        f"input '{name}' shape {list(inputs[name].shape)} is outside the engine's optimization profile",
                        "widen backend.min_batch/max_batch/min_seq/max_seq and rebuild",
                    )
            outputs = {}
            for name in self._outputs:
                shape = tuple(self._context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise Unsupported(f"output '{name}' has a data-dependent shape {list(shape)}; this backend needs shapes known before run")
                outputs[name] = torch.empty(shape, dtype=self._dtypes[name], device=self.device)
        self._stream.synchronize()
        bound = _Bound(inputs, outputs)
        self._bind(bound)
        return bound

    def _bind(self, bound: _Bound) -> None:
        """Point the context at ``bound``'s tensors (shapes first, then addresses)."""
        for name, tensor in bound.inputs.items():
            self._context.set_input_shape(name, tuple(tensor.shape))
        for name, tensor in {**bound.inputs, **bound.outputs}.items():
            self._context.set_tensor_address(name, tensor.data_ptr())
        self._current = bound

    def run(self, inputs: _Bound) -> dict[str, Any]:
        if inputs is not self._current:
            self._bind(inputs)
        if not self._context.execute_async_v3(self._stream.cuda_stream):
            raise HarnessError("tensorrt execute_async_v3 failed (see the TensorRT log above)")
        self.timer.mark_done()
        self._stream.synchronize()
        return inputs.outputs

    def fetch(self, outputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
        torch = self._torch
        self._stream.synchronize()
        host = {}
        for name, tensor in outputs.items():
            if tensor.dtype in (torch.bfloat16, getattr(torch, "float8_e4m3fn", None)):
                tensor = tensor.float()
            host[name] = tensor.cpu().numpy()
        return host

    def memory(self) -> dict[str, float]:
        """Peak torch-allocated MiB (I/O buffers) and device-wide used MiB.

        TensorRT allocates the context's activation memory itself, outside torch's
        allocator, so ``peak_allocated_mib`` covers I/O only; ``device_used_mib``
        (total - free, all processes) bounds the whole footprint from above.
        """
        torch = self._torch
        free, total = torch.cuda.mem_get_info(self.device)
        return {
            "peak_allocated_mib": torch.cuda.max_memory_allocated(self.device) / 2**20,
            "device_used_mib": (total - free) / 2**20,
        }

    def close(self) -> None:
        self._current = None
        self._context = None
        self._engine = None
        self._runtime = None
