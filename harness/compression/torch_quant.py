"""PyTorch recipes: dynamic int8 of ``nn.Linear`` layers with ``torch.ao.quantization``, and
weight-only int8/int4 of decoder LLMs with torch's own weight-only CPU kernels.

``torchao`` is the successor of ``torch.ao.quantization`` but is not installed here
(not in ``constraints.txt``), so the eager-mode API that ships inside torch is used:
``quantize_dynamic`` swaps every ``nn.Linear`` for a dynamically quantized one (int8
weights packed for fbgemm/x86 or qnnpack/ARM, activations quantized per call). It
works on a deep copy: the fp32 module stays intact for the accuracy reference. Static
int8 in PyTorch needs FX/PT2E graph capture with per-model observers; it is refused
with a reason instead of being approximated.

Weight-only LLM recipes (:func:`weight_only`) use the kernels torch ships for exactly
this (``aten._weight_int8pack_mm``: int8 weights, one symmetric scale per output
channel; ``aten._weight_int4pack_mm_for_cpu``: int4 weights packed two per byte,
asymmetric, groups of 32/64/128/256 input weights) with fp32 activations, the path
torchao took on the CPU and gpt-fast takes. torchao 0.18 (the release on the index
beside torch 2.13) was tried and not used: its CPU int4 for float activations keeps the
int4 values unpacked in int8 and dequantizes every call (measured here: no smaller
than int8 and about 3x slower than fp32), and once installed transformers imports it on
every model build.
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
        raise Unavailable(
            f"torch.ao.quantization is missing from torch {torch.__version__} ({exc})", "install a torch build with quantization support"
        ) from exc
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


#: Group sizes torch's CPU int4 kernel accepts.
INT4_GROUPS = (32, 64, 128, 256)
DEFAULT_INT4_GROUP = 128


def _int8_weights(weight: Any) -> tuple[Any, Any]:
    """Symmetric int8 per output channel: ``(q int8 (n, k), scales (n,))``, weight ~ q x scale."""
    import torch

    scales = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.round(weight / scales[:, None]).clamp(-128, 127).to(torch.int8)
    return q, scales.float()


def _int4_weights(weight: Any, group: int) -> tuple[Any, Any]:
    """Asymmetric int4 in groups of ``group`` input weights, packed for the CPU kernel:
    ``(packed, scales_and_zeros (k/group, n, 2))`` with weight ~ (q - 8) x scale + zero."""
    import torch

    n, k = weight.shape
    grouped = weight.reshape(n, k // group, group)
    low, high = grouped.amin(dim=-1, keepdim=True), grouped.amax(dim=-1, keepdim=True)
    scale = (high - low).clamp(min=1e-12) / 15.0
    q = torch.round((grouped - low) / scale).clamp(0, 15).to(torch.int32).reshape(n, k)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    zero = low + 8 * scale  # the kernel centres q on 8
    scales_and_zeros = torch.stack([scale.reshape(n, -1).t(), zero.reshape(n, -1).t()], dim=-1).contiguous()
    return packed, scales_and_zeros.float()


def _weight_only_linear(linear: Any, bits: int, group: int) -> Any:
    """``linear`` with int8 or int4 weights; float activations and bias."""
    import torch

    class WeightOnlyLinear(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.in_features, self.out_features = linear.in_features, linear.out_features
            weight = linear.weight.detach().float()
            if bits == 8:
                q, scales = _int8_weights(weight)
            else:
                q, scales = _int4_weights(weight, group)
            self.register_buffer("qweight", q)
            self.register_buffer("scales", scales)
            self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

        def forward(self, x: Any) -> Any:
            flat = x.reshape(-1, self.in_features).float().contiguous()
            if bits == 8:
                out = torch.ops.aten._weight_int8pack_mm(flat, self.qweight, self.scales)
            else:
                out = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.qweight, group, self.scales)
            out = out.reshape(*x.shape[:-1], self.out_features).to(x.dtype)
            return out if self.bias is None else out + self.bias

    return WeightOnlyLinear()


def weight_only(module: Any, recipe: Any) -> tuple[Any, dict[str, Any]]:
    """A copy of the causal LM ``module`` with weight-only int8/int4 linear layers.

    Every ``nn.Linear`` of the decoder blocks at the recipe's bits, the LM head at int8
    (as NNCF keeps the last layer at its int8 backup); a layer whose input width is not
    a multiple of the int4 group falls back to int8 (counted in the record). The token
    embedding stays fp32. int4 groups: 32, 64, 128 (the default) or 256.
    """
    import torch

    if recipe.ratio != 1:
        raise Unsupported(
            f"the pytorch weight-only recipe gives every layer one bit width; ratio={recipe.ratio} mixes int4 and int8",
            "use scenario.quantization.ratio=1.0 with backend=pytorch, or backend=openvino (NNCF) for mixed precision",
        )
    group = -1
    if recipe.bits == 8 and recipe.group_size not in (None, -1):
        raise Unsupported(
            f"torch's int8 weight-only kernel takes one scale per output channel, not groups of {recipe.group_size}",
            "leave scenario.quantization.group_size null (or -1) with llm_int8 on pytorch",
        )
    if recipe.bits == 4:
        group = DEFAULT_INT4_GROUP if recipe.group_size is None else recipe.group_size
        if group not in INT4_GROUPS:
            raise Unsupported(
                f"torch's CPU int4 kernel takes groups of {', '.join(map(str, INT4_GROUPS))} weights, not {group}",
                "set scenario.quantization.group_size to one of those (or null: 128)",
            )
    model = copy.deepcopy(module).eval()
    head = model.get_output_embeddings()
    layers = {"int4": 0, "int8": 0, "int8 (LM head)": 0, "int8 (width not a multiple of the group)": 0}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, torch.nn.Linear):
                continue
            if child is head:
                bits, kind = 8, "int8 (LM head)"
            elif recipe.bits == 4 and child.in_features % group:
                bits, kind = 8, "int8 (width not a multiple of the group)"
            else:
                bits, kind = recipe.bits, f"int{recipe.bits}"
            setattr(parent, name, _weight_only_linear(child, bits, group))
            layers[kind] += 1
    if recipe.bits == 4 and not layers["int4"]:
        raise Unsupported(
            f"no linear layer of this model has an input width that is a multiple of {group}, so none would be int4",
            "set scenario.quantization.group_size to a divisor of the model's widths (32, 64, 128 or 256)",
        )
    return model, {
        "name": recipe.name,
        "tool": "torch weight-only CPU kernels (aten._weight_int8pack_mm, aten._weight_int4pack_mm_for_cpu)",
        "weights": "int8 (symmetric, per channel)" if recipe.bits == 8 else f"int4 (asymmetric, groups of {group})",
        "group_size": group,
        "ratio": 1.0,
        "layers": {k: v for k, v in layers.items() if v},
        "lm_head": "int8",
        "embeddings": "fp32",
        "activations": "fp32",
        "calibrated": False,
    }
