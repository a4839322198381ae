"""Text generation on the ``pytorch`` backend: the transformers model, its KV cache, our loop.

Why this path: a PyTorch practitioner serves a transformers causal LM with its own KV
cache classes; what ``model.generate`` adds on top (logits processors, stopping
criteria, streamers) is Python overhead per token that belongs to no engine. So the
session calls the model's forward directly inside the shared token loop
(:mod:`harness.generation.loop`), with ``logits_to_keep=1`` as ``generate`` does (only
the last position's logits are computed), and takes each token's timestamp once the
logits are on the host (``.cpu()`` syncs a CUDA stream).

Cache: ``DynamicCache`` (grows by concatenation) in eager mode. ``backend.compile=true``
switches to ``StaticCache`` (pre-allocated for prompt + new tokens) and passes a
fixed-length attention mask, so every decode step has the same shapes and
``torch.compile`` compiles prefill and decode once instead of once per length: the
static cache is what makes compilation pay off.

Precision: fp32 runs the source module as is; bf16 (and fp16 on CUDA) run a copy cast
to that dtype (how LLMs are deployed, rather than autocast around fp32 weights); int8 and
int4 run a copy with weight-only linear layers on torch's CPU kernels and fp32
activations (:func:`harness.compression.torch_quant.weight_only`).
"""

from __future__ import annotations

import copy
import time
from typing import Any, Sequence

import numpy as np

from harness.compression.recipes import WeightRecipe
from harness.errors import Unsupported
from harness.generation.loop import next_token_logprobs, positions, run_loop
from harness.generation.session import GREEDY, Decoding, GenerationOutput, GenerationPlan, GenerationSession

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def generation_precisions(cuda: bool) -> frozenset[str]:
    """fp32 and bf16 everywhere; fp16 only on CUDA (the CPU has no fast fp16 matmul)."""
    return frozenset({"fp32", "bf16"} | ({"fp16"} if cuda else set()))


class TorchStepper:
    """Prefill and decode steps of a transformers causal LM over a dynamic or static cache."""

    def __init__(self, model: Any, device: str, static_len: int | None, compile_mode: str | None) -> None:
        import torch

        self.model = model
        self.device = device
        self.static_len = static_len
        self.cache: Any = None
        self.cache_batch = 0
        self.forward = torch.compile(model.forward, mode=compile_mode) if compile_mode else model.forward

    def _run(self, ids: np.ndarray, mask: np.ndarray, pos: np.ndarray) -> np.ndarray:
        import torch

        if self.static_len is not None:  # fixed mask length: the shapes of every decode step agree
            mask = np.pad(mask, ((0, 0), (0, self.static_len - mask.shape[1])))
        tensors = [torch.from_numpy(np.ascontiguousarray(a)).to(self.device) for a in (ids, mask, pos)]
        with torch.inference_mode():
            out = self.forward(input_ids=tensors[0], attention_mask=tensors[1], position_ids=tensors[2], cache=self.cache, use_cache=True, logits_to_keep=1)
            return out.logits[:, -1].float().cpu().numpy()

    def prefill(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        import torch
        from transformers import DynamicCache, StaticCache

        config = self.model.config
        if self.static_len is None:
            self.cache = DynamicCache(config=config)
        elif self.cache is None or self.cache_batch != ids.shape[0]:  # allocated on first use, per batch size
            self.cache, self.cache_batch = StaticCache(config=config, max_cache_len=self.static_len), ids.shape[0]
        else:
            with torch.inference_mode():  # its tensors were made in inference mode
                self.cache.reset()
        return self._run(ids, mask, positions(mask, ids.shape[1]))

    def decode(self, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self._run(tokens[:, None], mask, positions(mask, 1))


class TorchGenerationSession(GenerationSession):
    """A causal LM on a device, generating with :class:`TorchStepper` in the shared loop."""

    def __init__(self, model: Any, device: str, precision: str, plan: GenerationPlan, compile_mode: str | None, pad_id: int) -> None:
        self.model = model
        self.device = device
        self.precision = precision
        self.pad_id = pad_id
        static_len = plan.max_prompt_len + plan.max_new_tokens if compile_mode else None
        self.stepper = TorchStepper(model, device, static_len, compile_mode)
        self.compile_mode = compile_mode

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, decoding: Decoding = GREEDY) -> list[GenerationOutput]:
        return run_loop(self.stepper, prompts, max_new_tokens, decoding, self.pad_id)

    def score(self, ids: np.ndarray) -> np.ndarray:
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(ids)).to(self.device)
        with torch.inference_mode():
            logits = self.model(input_ids=tensor, use_cache=False).logits.float().cpu().numpy()
        return next_token_logprobs(logits, ids)

    def memory(self) -> dict[str, float]:
        if not self.device.startswith("cuda"):
            return {}
        import torch

        return {"peak_allocated_mib": torch.cuda.max_memory_allocated(self.device) / 2**20}

    def metrics(self) -> dict[str, Any]:
        import transformers

        return {
            "engine": f"transformers {transformers.__version__} forward + harness token loop",
            "kv_cache": "StaticCache" if self.stepper.static_len else "DynamicCache",
            "compile": self.compile_mode,
            "dtype": DTYPES[self.precision],
        }

    def close(self) -> None:
        self.stepper.cache = None


def weight_compressed(source: Any, recipe: WeightRecipe) -> Any:
    """A copy of the source model with weight-only int8/int4 linear layers
    (:func:`harness.compression.torch_quant.weight_only`), its stage figures in ``source.stages``."""
    from harness.compression.pipeline import decoder_stage
    from harness.compression.torch_quant import state_size_bytes, weight_only

    source.status(f"compressing the weights with {recipe.name} on pytorch (in memory, not cached)")
    started = time.perf_counter()
    model, realised = weight_only(source.module, recipe)
    stage = decoder_stage(recipe, realised, time.perf_counter() - started, False, None, state_size_bytes(model))
    source.stages["compression"] = {**stage, "fp32_size_bytes": state_size_bytes(source.module), "fp32_artifact": "the fp32 state dict (torch.save)"}
    return model


def prepare(source: Any, plan: GenerationPlan, device: str, compile_mode: str | None) -> TorchGenerationSession:
    """The session for ``source`` at ``plan.precision`` on ``device`` (a cast copy unless fp32 on the CPU)."""
    import torch

    cuda = device.startswith("cuda")
    compute = "fp32" if plan.weights is not None else plan.precision  # weight-only: float activations
    if plan.weights is not None and cuda:
        raise Unsupported("pytorch weight-only int8/int4 uses torch's CPU weight-only kernels", "use backend.device=cpu, or backend=onnxruntime / openvino")
    if compute not in generation_precisions(cuda):
        raise Unsupported(
            f"pytorch generation does not run {plan.precision} on {device}",
            f"use one of: {', '.join(sorted(generation_precisions(cuda)))}, or int8/int4 weights (llm_int8, llm_int4)",
        )
    dtype = getattr(torch, DTYPES[compute])
    model = source.module
    if plan.weights is not None:
        model = weight_compressed(source, plan.weights)
    elif cuda or dtype != torch.float32:  # keep the CPU fp32 source intact: it is the eager reference
        model = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
    pad = source.tokenizer.pad_token_id if source.tokenizer is not None else 0
    session = TorchGenerationSession(model, device, compute, plan, compile_mode, int(pad or 0))
    if compile_mode:  # compile here, outside the timed region: a fresh and a reset cache guard differently
        source.status(f"torch.compile ({compile_mode}): compiling prefill and decode at the plan's shapes")
        dummy = [[1] * plan.max_prompt_len] * plan.max_batch_size
        for _ in range(2):
            session.generate(dummy, 2)
    return session
