"""Serving through any backend's generation session, one request at a time.

A backend that implements generation (:meth:`harness.backend.Backend.prepare_generation`)
but no serving session of its own still serves: :class:`GenerationServingSession`
hands each request to its :class:`~harness.generation.session.GenerationSession` in one
worker thread, first come first served. The token timestamps are the engine's own
(taken when each token reached the host), so TTFT includes the time a request waited
for the ones before it, as on a server without batching. ``metrics.backend.batching``
says exactly that; an engine with continuous batching (openvino-genai's pipeline, a
batched torch scheduler) replaces this by implementing ``prepare_serving``.
"""

from __future__ import annotations

from typing import Any, Optional

from harness.serving.session import Emit, GenerationRequest, ServingModel, ServingPlan, StreamEnd, ThreadedSession, TokenChunk, Tokenizer, now


#: ``metrics.backend.concurrency`` of an engine that serves one request at a time.
FIFO = "one at a time (FIFO)"


def fifo_session(backend: Any, model: ServingModel, plan: ServingPlan) -> "GenerationServingSession":
    """FIFO serving over ``backend``'s generation session, prepared for the plan's longest request."""
    from harness.generation.session import GenerationPlan

    precision = "fp32" if plan.precision == "auto" else plan.precision
    generation = backend.prepare_generation(model.source(), GenerationPlan(precision, 1, plan.max_prompt_tokens, plan.max_output_tokens))
    return GenerationServingSession(generation, model.tokenizer(), precision, backend.name)


class GenerationServingSession(ThreadedSession):
    """FIFO serving over a blocking :class:`GenerationSession` (greedy, exact output lengths)."""

    def __init__(self, session: Any, tokenizer: Optional[Tokenizer], precision: str, backend: str) -> None:
        super().__init__(workers=1)
        self.session = session
        self._tokenizer = tokenizer
        self.precision = precision
        self.backend = backend
        self.device = str(getattr(session, "device", "cpu"))

    def generate(self, request: GenerationRequest, emit: Emit) -> StreamEnd:
        from harness.generation.session import GREEDY

        if request.prompt_ids:
            prompt = list(request.prompt_ids)
        elif self._tokenizer is not None:
            prompt = list(self._tokenizer.encode(request.prompt))
        else:
            raise ValueError("an in-process engine needs token ids, and no tokenizer is known")
        (output,) = self.session.generate([prompt], request.max_tokens, GREEDY)
        for token, when in zip(output.tokens, output.token_times):
            emit(TokenChunk(when, ids=(int(token),)))
        return StreamEnd(now(), prompt_tokens=len(prompt), output_tokens=len(output.tokens), finish_reason="length")

    def tokenizer(self) -> Optional[Tokenizer]:
        return self._tokenizer

    def scorer(self) -> Any:
        return self.session

    def metrics(self) -> dict[str, Any]:
        facts = dict(self.session.metrics())
        facts["batching"] = f"none: one request at a time (FIFO) through {self.backend}'s generation session"
        facts["concurrency"] = FIFO
        return facts

    async def aclose(self) -> None:
        await super().aclose()
        self.session.close()
