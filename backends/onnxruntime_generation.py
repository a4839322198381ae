"""Text generation on the ``onnxruntime`` backend: the exported decoder, driven with IOBinding.

Why this path: ONNX Runtime deployments of decoders (optimum's ``ORTModelForCausalLM``,
the ONNX Runtime generate loop) run one ONNX graph with past-key-value inputs and
outputs, and bind the cache with IOBinding so each step's ``present`` tensors become
the next step's ``past`` inputs as ORT values, never copied through numpy. This session
does exactly that on the graph the harness's export stage produced (cached and
validated against eager logits; :mod:`harness.generation.onnx_export`), inside the
shared token loop (:mod:`harness.generation.loop`). On a GPU provider the cache stays
in device memory; only each step's logits come to the host (that copy is the sync the
token's timestamp waits for). onnxruntime-genai was not used: the export stage stays
the canonical route to ONNX, and the genai package needs its own model builder.

The graph returns logits for every input position (as optimum's exports do), so a
prefill also computes the LM head over the whole prompt; decode steps have one position.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from harness.compression.recipes import WeightRecipe
from harness.errors import Unsupported
from harness.generation.decoders import KVLayout, kv_layout
from harness.generation.loop import next_token_logprobs, positions, run_loop
from harness.generation.onnx_export import empty_past, io_names
from harness.generation.session import GREEDY, Decoding, GenerationOutput, GenerationPlan, GenerationSession


class OrtStepper:
    """Prefill and decode through ``run_with_iobinding``; presents rebound as the next pasts."""

    def __init__(self, session: Any, layout: KVLayout, kv_device: str) -> None:
        self.session = session
        self.inputs, self.outputs = io_names(layout.layers)
        self.layout = layout
        self.kv_device = kv_device
        self.past: list[Any] = []

    def _run(self, ids: np.ndarray, mask: np.ndarray, pos: np.ndarray) -> np.ndarray:
        binding = self.session.io_binding()
        for name, array in (("input_ids", ids), ("attention_mask", mask), ("position_ids", pos)):
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name, value in zip(self.inputs[3:], self.past):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")
        for name in self.outputs[1:]:
            binding.bind_output(name, self.kv_device)
        self.session.run_with_iobinding(binding)
        values = binding.get_outputs()
        self.past = values[1:]
        return values[0].numpy()[:, -1]

    def prefill(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        import onnxruntime as ort

        self.past = [ort.OrtValue.ortvalue_from_numpy(a) for a in empty_past(self.layout, ids.shape[0])]
        return self._run(ids, mask, positions(mask, ids.shape[1]))

    def decode(self, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self._run(tokens[:, None], mask, positions(mask, 1))


class OrtGenerationSession(GenerationSession):
    """An ``InferenceSession`` of the decoder-with-past graph and its stepper."""

    def __init__(self, session: Any, config: dict[str, Any], device: str, kv_device: str, pad_id: int, path: str) -> None:
        layout = kv_layout(config)
        self.session = session
        self.device = device
        self.pad_id = pad_id
        self.path = path
        self.layout = layout
        self.stepper = OrtStepper(session, layout, kv_device)

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, decoding: Decoding = GREEDY) -> list[GenerationOutput]:
        return run_loop(self.stepper, prompts, max_new_tokens, decoding, self.pad_id)

    def score(self, ids: np.ndarray) -> np.ndarray:
        mask = np.ones_like(ids, dtype=np.int64)
        feeds = {
            "input_ids": np.ascontiguousarray(ids, dtype=np.int64),
            "attention_mask": mask,
            "position_ids": positions(mask, ids.shape[1]),
            **dict(zip(self.stepper.inputs[3:], empty_past(self.layout, ids.shape[0]))),
        }
        logits = self.session.run(["logits"], feeds)[0]
        return next_token_logprobs(logits, ids)

    def metrics(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {
            "engine": f"onnxruntime {ort.__version__} InferenceSession + IOBinding + harness token loop",
            "kv_cache": f"past/present OrtValues rebound every step on {self.stepper.kv_device} (no host copy)",
            "providers": self.session.get_providers(),
            "graph": self.path,
        }

    def close(self) -> None:
        self.stepper.past = []


def weight_compressed(backend: Any, source: Any, recipe: WeightRecipe) -> Path:
    """The decoder export with MatMulNBits weights (:func:`harness.compression.onnx_quant.weight_only`),
    built once per export and recipe in the compressed-artifact cache."""
    import onnxruntime as ort

    from harness.compression import onnx_quant
    from harness.compression.pipeline import compress_decoder

    fp32 = source.onnx()
    export = source.stages["export"]
    folder, stage = compress_decoder(
        backend,
        recipe,
        export["key"],
        {"onnxruntime": ort.__version__},
        lambda work: onnx_quant.weight_only(fp32, work / "model.onnx", recipe),
        source.cache_root,
        source.status,
    )
    source.stages["compression"] = {**stage, "fp32_size_bytes": export["size_bytes"], "fp32_artifact": "the fp32 ONNX export"}
    return folder / "model.onnx"


def prepare(backend: Any, source: Any, plan: GenerationPlan) -> OrtGenerationSession:
    """A session on the exported decoder (exported and validated on first use, then cached),
    or on its weight-only int8/int4 form for ``plan.weights``."""
    import onnxruntime as ort

    if plan.weights is not None:
        path = weight_compressed(backend, source, plan.weights)
    elif plan.precision != "fp32":
        raise Unsupported(
            f"onnxruntime generation runs the fp32 decoder export or its weight-only int8/int4 form, not {plan.precision}",
            "use scenario.precision=fp32, +scenario=llm_int8 or llm_int4",
        )
    else:
        path = source.onnx()
    providers = list(backend.options.providers)
    session = ort.InferenceSession(str(path), backend.session_options(), providers=providers)
    kv_device = "cuda" if providers[0] == "CUDAExecutionProvider" else "cpu"
    pad = source.tokenizer.pad_token_id if source.tokenizer is not None else 0
    return OrtGenerationSession(session, source.config, backend.device(), kv_device, int(pad or 0), str(path))
