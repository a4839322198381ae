"""Serving on the ``openvino`` backend: openvino-genai's ``ContinuousBatchingPipeline``.

Why this path: OpenVINO serves LLMs (OpenVINO Model Server, ``optimum-cli`` +
openvino-genai) through the continuous-batching pipeline: a scheduler over a paged KV
cache (``SchedulerConfig``: cache size in blocks, tokens and sequences per step, split
prefill fused with the running decodes) that turns the model's
``ScaledDotProductAttention`` ops into ``PagedAttention`` ops (``SDPAToPagedAttention``).

The IR the generation kind builds from the harness's ONNX export cannot go there: the
ONNX graph spells attention out as MatMul/Softmax, and the transformation finds no SDPA
op. So this module builds the IR the way optimum-intel does, from the PyTorch model:
``openvino.convert_model`` traces the transformers module (its ``sdpa`` attention
becomes one SDPA op per layer) behind a wrapper that takes the cache as flat past
key/value tensors, then the same stateful transformation as the generation IR
(``beam_idx`` gather, past/present folded into state variables) and a state
initialiser sized from ``input_ids`` (the ``ReadValue`` form the paged-attention
transformation matches). Tokenizer IRs, config and generation config sit beside it,
cached by content. Greedy tokens of the served model are checked against eager fp32
by the serving kind (``metrics.accuracy.agreement``) and by the tests.

The pipeline is stepped by the harness's engine thread
(:class:`~harness.serving.batching.EngineThreadSession`): requests are added between
steps (``add_request`` on token ids), each ``step()`` runs one scheduler step, and each
request's new tokens are read from its handle right after, stamped with the host time
the step returned. ``PipelineMetrics.scheduled_requests`` after a step is the engine's
own count of sequences in it.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from harness import cache
from harness.errors import HarnessError, Unsupported, exception_line
from harness.generation.decoders import kv_layout
from harness.generation.onnx_export import io_names, with_past
from harness.serving.batching import BatchingOptions, EngineThreadSession, LazyScorer, SteppedEngine
from harness.serving.session import GenerationRequest, ServingModel, ServingPlan

#: Tokens per KV cache block of the CPU plugin's paged attention (GPU uses 16: more blocks, same bytes).
BLOCK_TOKENS = {"CPU": 32, "GPU": 16}


def _convert(source: Any) -> Any:
    """The stateful OpenVINO model of ``source.module`` with one SDPA op per attention layer."""
    import openvino as ov
    import openvino.opset13 as ops
    import torch

    from harness.backends.openvino_generation import make_stateful

    module = source.module
    if getattr(module.config, "_attn_implementation", "sdpa") != "sdpa":
        raise Unsupported(
            f"{source.name} uses '{module.config._attn_implementation}' attention; the continuous-batching "
            "pipeline needs torch's scaled_dot_product_attention (attn_implementation='sdpa')",
            "load the model with attn_implementation='sdpa', or backend.serving.mode=fifo",
        )
    layout = kv_layout(source.config)
    batch, past_len, seq = 2, 5, 3
    example = (
        torch.randint(1, 100, (batch, seq)),
        torch.ones(batch, past_len + seq, dtype=torch.int64),
        torch.arange(past_len, past_len + seq).expand(batch, seq).contiguous(),
        [torch.randn(batch, layout.kv_heads, past_len, layout.head_dim) for _ in range(2 * layout.layers)],
    )
    with torch.no_grad(), warnings.catch_warnings():
        # tracing transformers' data-dependent branches warns once per branch; the example shapes
        # (past > 0, several query tokens) take the general path, and the greedy-token tests check it
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        model = ov.convert_model(with_past(module, layout.layers, assign=True), example_input=example)
    if not any(op.get_type_name() == "ScaledDotProductAttention" for op in model.get_ops()):
        raise Unsupported(
            f"{source.name}: OpenVINO's conversion produced no ScaledDotProductAttention op, so the continuous-batching pipeline cannot page its cache",
            "backend.serving.mode=fifo",
        )
    inputs, outputs = io_names(layout.layers)
    for port, name in zip(model.inputs, inputs):
        port.get_tensor().set_names({name})
    for port, name in zip(model.outputs, outputs):
        port.get_tensor().set_names({name})
    for name in inputs[3:]:  # static heads and head size: the paged-attention transformation reads them
        model.input(name).get_node().set_partial_shape(ov.PartialShape([-1, layout.kv_heads, -1, layout.head_dim]))
    model.validate_nodes_and_infer_types()
    make_stateful(model, layout.layers)
    # Each state starts as zeros of (batch of input_ids, kv_heads, 0, head_dim): the ReadValue-with-initialiser
    # form optimum-intel's exports have and SDPAToPagedAttention matches.
    batch_dim = ops.gather(ops.shape_of(model.input("input_ids"), output_type="i64"), ops.constant(np.array([0], dtype=np.int64)), ops.constant(0))
    rest = ops.constant(np.array([layout.kv_heads, 0, layout.head_dim], dtype=np.int64))
    for op in model.get_ops():
        if op.get_type_name() == "ReadValue":
            zero = ops.constant(np.zeros((), dtype=op.get_output_element_type(0).to_dtype()))
            op.set_arguments([ops.broadcast(zero, ops.concat([batch_dim, rest], 0))])
    model.validate_nodes_and_infer_types()
    return model


def cb_folder(source: Any) -> Path:
    """The openvino-genai model folder for the continuous-batching pipeline (built once, cached)."""
    import openvino as ov
    import torch
    import transformers

    from harness.backends.openvino_generation import _version, cached_genai_folder

    key = cache.content_key(
        "openvino-cb-folder/1",
        source.config,
        source.weights_digest,
        ov.__version__,
        torch.__version__,
        transformers.__version__,
        _version("openvino-tokenizers"),
    )
    return cached_genai_folder(
        source,
        "openvino_cb",
        key,
        lambda: _convert(source),
        "openvino_cb_ir",
        f"converting {source.name} from PyTorch to a stateful OpenVINO IR with SDPA ops",
        route="torch -> openvino.convert_model (SDPA) -> stateful",
    )


class GenaiEngine(SteppedEngine):
    """A ``ContinuousBatchingPipeline`` stepped by the engine thread."""

    def __init__(self, pipe: Any, eos_id: int | None) -> None:
        self.pipe = pipe
        self.eos_id = eos_id
        self._next_id = 0

    def add(self, request: GenerationRequest, prompt: list[int]) -> Any:
        import openvino as ov
        import openvino_genai as genai

        config = genai.GenerationConfig()
        config.max_new_tokens = request.max_tokens
        config.do_sample = False
        config.ignore_eos = request.ignore_eos
        if request.ignore_eos:
            config.min_new_tokens = request.max_tokens
        elif self.eos_id is not None:
            config.eos_token_id = self.eos_id
        self._next_id += 1
        return self.pipe.add_request(self._next_id, ov.Tensor(np.asarray([prompt], dtype=np.int64)), config)

    def busy(self) -> bool:
        return bool(self.pipe.has_non_finished_requests())

    def step(self) -> int:
        self.pipe.step()
        return int(self.pipe.get_metrics().scheduled_requests)

    def collect(self, handle: Any) -> tuple[list[int], bool]:
        import openvino_genai as genai

        tokens: list[int] = []
        if handle.can_read():
            for output in handle.read().values():
                tokens.extend(int(t) for t in output.generated_ids)
        return tokens, handle.get_status() != genai.GenerationStatus.RUNNING

    def cancel(self, handle: Any) -> None:
        handle.cancel()

    def metrics(self) -> dict[str, Any]:
        metrics = self.pipe.get_metrics()
        return {
            "kv_cache_bytes": int(metrics.cache_size_in_bytes),
            "kv_cache_max_usage_percent": float(metrics.max_cache_usage),
            "kv_cache_avg_usage_percent": float(metrics.avg_cache_usage),
        }


def prepare(backend: Any, model: ServingModel, plan: ServingPlan, properties: dict[str, Any], family: str) -> EngineThreadSession:
    """A continuous-batching session on ``backend.options.device`` sized by ``backend.serving``,
    compiled with the backend's ``properties`` (its ``compile_config`` for ``plan.precision``, checked
    by the backend); ``family`` is the device family (CPU, GPU...), which fixes the KV block size."""
    import openvino_genai as genai

    from harness.backends.openvino_generation import PRECISION, _version

    precision = plan.precision
    options: BatchingOptions = backend.options.serving
    source = model.source()
    folder = cb_folder(source)
    block = BLOCK_TOKENS.get(family, 32)
    scheduler = genai.SchedulerConfig()
    scheduler.max_num_seqs = options.max_batch
    scheduler.max_num_batched_tokens = options.max_batched_tokens  # prompts longer than this are prefilled in chunks
    scheduler.num_kv_blocks = options.cache_blocks(plan, block)
    scheduler.enable_prefix_caching = False  # every request pays its own prefill, as the workload intends
    properties = dict(properties)
    properties["KV_CACHE_PRECISION"] = PRECISION[precision]
    try:
        pipe = genai.ContinuousBatchingPipeline(str(folder), scheduler, backend.options.device, properties)
    except RuntimeError as exc:
        raise HarnessError(f"openvino-genai could not open {folder} for continuous batching: {exception_line(exc, 300)}") from exc
    eos = source.config.get("eos_token_id")
    facts = {
        "engine": f"openvino-genai {_version('openvino-genai')} ContinuousBatchingPipeline",
        "batching": (
            f"continuous: openvino-genai's scheduler over a paged KV cache, up to {options.max_batch} sequences "
            f"and {scheduler.max_num_batched_tokens} tokens per step"
            + (", prompts split and fused with running decodes" if scheduler.dynamic_split_fuse else "")
        ),
        "concurrency": f"continuous batching, <= {options.max_batch} (openvino-genai)",
        "max_batch": options.max_batch,
        "max_batched_tokens": scheduler.max_num_batched_tokens,
        "dynamic_split_fuse": bool(scheduler.dynamic_split_fuse),
        "prefix_caching": False,
        "kv_cache_blocks": scheduler.num_kv_blocks,
        "kv_cache_block_tokens": block,
        "kv_cache_tokens": scheduler.num_kv_blocks * block,
        "kv_cache_precision": properties["KV_CACHE_PRECISION"],
        "inference_precision": properties["INFERENCE_PRECISION_HINT"],
        "model_folder": str(folder),
    }
    engine = GenaiEngine(pipe, int(eos) if isinstance(eos, int) else None)

    def scoring_session(ids: np.ndarray) -> Any:
        from harness.generation.session import GenerationPlan

        # more than one prompt per call selects the stateful request: the engine that returns logits
        return backend.prepare_generation(source, GenerationPlan(precision, max(2, int(ids.shape[0])), int(ids.shape[1]), 1))

    return EngineThreadSession(engine, model.tokenizer(), precision, facts, scorer=LazyScorer(scoring_session), device=backend.options.device)
