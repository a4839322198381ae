"""PyTorch recipes: dynamic int8 of ``nn.Linear`` layers with ``torch.ao.quantization``.

``torchao`` is the successor of ``torch.ao.quantization`` but is not installed here
(not in ``constraints.txt``), so the eager-mode API that ships inside torch is used:
``quantize_dynamic`` swaps every ``nn.Linear`` for a dynamically quantized one (int8
weights packed for fbgemm/x86 or qnnpack/ARM, activations quantized per call). It
works on a deep copy: the fp32 module stays intact for the accuracy reference. Static
int8 in PyTorch needs FX/PT2E graph capture with per-model observers; it is refused
with a reason instead of being approximated.
"""

from __future__ import annotations

import copy
import io
import warnings
from typing import Any

from harness.compression.recipes import Recipe
from harness.errors import Unavailable, Unsupported

MODES = ("dynamic",)


def quantize_dynamic(module: Any) -> Any:
    """A deep copy of ``module`` with every ``nn.Linear`` dynamically quantized to int8."""
    import torch

    try:
        from torch.ao.quantization import quantize_dynamic as ao_quantize_dynamic
    except ImportError as exc:  # pragma: no cover - depends on the torch build
        raise Unavailable(f"torch.ao.quantization is missing from torch {torch.__version__} ({exc})",
                          "install a torch build with quantization support") from exc
    engines = torch.backends.quantized.supported_engines
    if not any(e in engines for e in ("x86", "fbgemm", "qnnpack")):
        raise Unavailable(f"torch {torch.__version__} has no int8 CPU engine (has {engines})")
    model = copy.deepcopy(module).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
        quantized = ao_quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    if hasattr(module, "input_names"):
        quantized.input_names = module.input_names
    return quantized


def state_size_bytes(module: Any) -> int:
    """Serialized size of ``module``'s state (packed int8 weights included), in bytes."""
    import torch

    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.tell()


def realise(module: Any, recipe: Recipe) -> tuple[Any, dict[str, Any]]:
    """Apply a resolved ``recipe`` to ``module``; returns the new module and record details."""
    import torch

    if recipe.name != "int8_dynamic":
        raise Unsupported(
            f"pytorch has no recipe '{recipe.name}': only dynamic int8 (torch.ao quantize_dynamic) is implemented",
            "use scenario.quantization.mode=dynamic (or auto) with backend=pytorch",
        )
    quantized = quantize_dynamic(module)
    linear = sum(1 for m in module.modules() if isinstance(m, torch.nn.Linear))
    return quantized, {
        "name": recipe.name,
        "tool": "torch.ao.quantization.quantize_dynamic",
        "engine": torch.backends.quantized.engine,
        "layers": f"{linear} nn.Linear -> dynamic int8",
        "weights": "int8 (per tensor)",
        "activations": "int8/uint8, per call",
        "calibrated": False,
        "size_bytes": state_size_bytes(quantized),
    }
