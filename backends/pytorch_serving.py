"""Serving on the ``pytorch`` backend: transformers' own continuous batching.

Why this path: transformers ships a continuous-batching engine
(``ContinuousBatchingManager``, behind ``model.init_continuous_batching`` and
``generate_batch``; the engine of ``transformers serve``) that runs on the CPU: a
background thread schedules waiting and running requests into one forward pass per
step over a paged KV cache (each sequence owns its blocks; prompts are split to fit the
step's token budget), with the model switched to a paged attention implementation.
Requests join and leave the running batch at token boundaries.

Sizing comes from ``backend.serving`` (the same keys as every backend): sequences per
step (``max_requests_per_batch``), tokens per step (``max_batch_tokens``) and the cache
in pages of :data:`PAGE_TOKENS` tokens (``num_blocks``). Without ``num_blocks``
transformers sizes the cache from the machine's free memory (60 % on a CPU), which on a
shared machine is neither reproducible nor polite.

Each request registers a result handler (called on the event loop) before it is added,
streams its tokens with the engine's own per-token timestamps (``record_timestamps``:
``time.perf_counter()`` when the token was appended on the host), and is cancelled in
the engine when its consumer goes away. The engine's own count of requests in each
forward pass is read after every step (:class:`~harness.serving.batching.BatchStats`);
transformers has no public counter for it, so a subclass of the manager reads the batch
processor's ``num_request_in_batch``, and says so when a transformers version lacks it.

The module runs on a copy (the manager switches its attention implementation; the
source module stays the eager fp32 reference), cast to bf16 for ``precision=bf16``.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
from typing import Any, AsyncIterator, Optional

from harness.errors import Unsupported
from harness.serving.batching import BatchingOptions, BatchStats, LazyScorer
from harness.serving.session import GenerationRequest, ServerGone, ServingModel, ServingPlan, ServingSession, StreamEnd, StreamEvent, TokenChunk, Tokenizer, now

#: Tokens per KV cache page (transformers' default is 256; small pages waste less on short requests).
PAGE_TOKENS = 32


def _manager_class() -> type:
    """``ContinuousBatchingManager`` that counts the requests of each forward pass into ``stats``."""
    from transformers.generation.continuous_batching.continuous_api import ContinuousBatchingManager

    class CountingManager(ContinuousBatchingManager):
        stats: BatchStats
        count_problem: Optional[str] = None

        def _generation_step(self) -> None:
            super()._generation_step()
            processor = self.batch_processor
            count = getattr(getattr(processor, "inputs_and_outputs", None), "num_request_in_batch", None)
            if count is None:
                self.count_problem = "this transformers version exposes no per-step request count"
            else:
                self.stats.record(int(count))

    return CountingManager


class TransformersServingSession(ServingSession):
    """Streams requests through a running ``ContinuousBatchingManager``."""

    def __init__(
        self, manager: Any, tokenizer: Optional[Tokenizer], precision: str, facts: dict[str, Any], eos_id: Any, scorer: LazyScorer, device: str = "cpu"
    ) -> None:
        self.manager = manager
        self.precision = precision
        self.device = device
        self._tokenizer = tokenizer
        self._facts = facts
        self._eos = eos_id if eos_id is not None else -1
        self._scorer = scorer
        self._ids = itertools.count()

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamEvent]:
        if not self.manager.is_running():
            raise ServerGone("transformers' continuous-batching thread is not running")
        prompt = list(request.prompt_ids) or (list(self._tokenizer.encode(request.prompt)) if self._tokenizer else [])
        if not prompt:
            raise ValueError("an in-process engine needs token ids, and no tokenizer is known")
        outputs: asyncio.Queue[Any] = asyncio.Queue()
        rid = f"harness-{next(self._ids)}"
        self.manager.register_result_handler(rid, outputs.put_nowait)  # before the request exists: no output is missed
        self.manager.add_request(
            prompt,
            request_id=rid,
            max_new_tokens=request.max_tokens,
            streaming=True,
            record_timestamps=True,
            eos_token_id=-1 if request.ignore_eos else self._eos,
        )
        seen, finished = 0, False
        try:
            while not finished:
                out = await outputs.get()
                if out.error:
                    if not self.manager.is_running():
                        raise ServerGone(f"transformers' continuous batching stopped: {out.error}")
                    raise RuntimeError(out.error)
                tokens, times = list(out.generated_tokens), list(out.timestamps or [])
                for token, when in zip(tokens[seen:], times[seen:]):
                    yield TokenChunk(when, ids=(int(token),))
                seen = len(tokens)
                finished = out.is_finished()
            yield StreamEnd(now(), prompt_tokens=len(prompt), output_tokens=seen, finish_reason="length" if seen >= request.max_tokens else "stop")
        finally:
            if not finished:
                self.manager.cancel_request(rid)

    def tokenizer(self) -> Optional[Tokenizer]:
        return self._tokenizer

    def scorer(self) -> Any:
        return self._scorer

    def take_batch_stats(self) -> dict[str, Any]:
        stats = self.manager.stats.take()
        if self.manager.count_problem:
            stats["problem"] = self.manager.count_problem
        return stats

    def metrics(self) -> dict[str, Any]:
        return dict(self._facts)

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, lambda: self.manager.stop(block=True))
        self._scorer.close()


def prepare(backend: Any, model: ServingModel, plan: ServingPlan) -> TransformersServingSession:
    """A running continuous-batching manager on a copy of the model, sized by ``backend.serving``."""
    import torch
    import transformers
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    from harness.backends import pytorch_generation

    precision = "fp32" if plan.precision == "auto" else plan.precision
    device = backend.options.device
    if precision not in pytorch_generation.generation_precisions(device.startswith("cuda")):
        raise Unsupported(f"pytorch serving does not run {precision} on {device}", "use scenario.precision=fp32 or bf16")
    options: BatchingOptions = backend.options.serving
    source = model.source()
    module = copy.deepcopy(source.module).to(device=device, dtype=getattr(torch, pytorch_generation.DTYPES[precision])).eval()
    pad = source.tokenizer.pad_token_id if source.tokenizer is not None else 0
    generation = GenerationConfig(do_sample=False, max_new_tokens=plan.max_output_tokens, eos_token_id=-1, pad_token_id=int(pad or 0))
    blocks = options.cache_blocks(plan, PAGE_TOKENS)
    config = ContinuousBatchingConfig(
        page_size=PAGE_TOKENS,
        num_blocks=blocks,
        max_batch_tokens=options.max_batched_tokens,
        max_requests_per_batch=options.max_batch,
        allow_block_sharing=False,
    )
    manager = _manager_class()(module, generation, config)
    manager.stats = BatchStats()
    manager.start()
    resolved = manager.continuous_batching_config
    facts = {
        "engine": f"transformers {transformers.__version__} ContinuousBatchingManager",
        "batching": (
            f"continuous: transformers' scheduler ({resolved.scheduler_type}) over a paged KV cache, up to "
            f"{options.max_batch} requests and {options.max_batched_tokens} tokens per forward pass, "
            "prompts split to fit"
        ),
        "concurrency": f"continuous batching, <= {options.max_batch} (transformers)",
        "max_batch": options.max_batch,
        "max_batched_tokens": options.max_batched_tokens,
        "attention": module.config._attn_implementation,
        "async_batching": resolved.use_async_batching,
        "kv_cache_blocks": blocks,
        "kv_cache_block_tokens": PAGE_TOKENS,
        "kv_cache_tokens": blocks * PAGE_TOKENS,
        "prefix_sharing": False,
        "dtype": pytorch_generation.DTYPES[precision],
    }
    eos = source.config.get("eos_token_id")

    def scoring_session(ids: Any) -> Any:
        from harness.generation.session import GenerationPlan

        return pytorch_generation.prepare(source, GenerationPlan(precision, int(ids.shape[0]), int(ids.shape[1]), 1), device, None)

    return TransformersServingSession(manager, model.tokenizer(), precision, facts, eos, LazyScorer(scoring_session), device)
