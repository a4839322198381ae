"""The generation contract: what a backend implements to run decoder LLMs.

A backend that can generate text declares ``Capabilities.generation = True`` and
overrides ``Backend.prepare_generation(source, plan)``, which returns a
:class:`GenerationSession`. The ``generation`` scenario (and the serving scenario on
top of it) only ever talks to that session:

``generate(prompts, max_new_tokens, decoding)``
    runs one call: every prompt (a list of token ids) is one request. It returns one
    :class:`GenerationOutput` per prompt, in order, with the generated token ids and,
    for each token, the host time (``time.perf_counter()``) at which that token was
    available on the host, i.e. after the device finished the step that produced it
    (a synced tensor, a streamer callback, a server-sent event received). Decode time
    is never computed by subtracting a prefill estimate from a total: every figure
    (TTFT, TPOT, inter-token latency, e2e; :mod:`harness.generation.timing`) comes from
    these timestamps and the request's ``start``.
``score(ids)``
    optional: log-probabilities of each next token, for perplexity beside the eager
    fp32 reference. The default refuses (``Unsupported``) and the record then carries
    no perplexity, with the reason.
``memory()``, ``metrics()``, ``close()``
    peak memory figures, engine facts for ``metrics.backend`` (the engine, its own
    timing figures to cross-check ours, cache layout...), releasing resources.

Why token ids and not text: tokenisation is not what a backend is measured on, and
ids let every backend be checked token for token against eager PyTorch (greedy
agreement). An engine that only takes text (an HTTP server) detokenizes with the
source's tokenizer.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np

from harness.cache import Workspace
from harness.errors import HarnessError, Unsupported

if TYPE_CHECKING:
    from harness.compression.recipes import WeightRecipe

DECODING_STRATEGIES = ("greedy", "sample")


@dataclass(frozen=True)
class Decoding:
    """How the next token is picked.

    ``greedy``: the arg-max of the logits (deterministic; the default and what the
    agreement with eager fp32 is measured on). ``sample``: softmax sampling at
    ``temperature``, restricted to the ``top_k`` most likely tokens (0 = all) and the
    smallest set whose probability reaches ``top_p``; ``seed`` makes a call reproducible
    on the same backend (different engines draw differently, so sampled tokens are
    never compared across backends).
    """

    strategy: str = "greedy"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in DECODING_STRATEGIES:
            raise ValueError(f"decoding: '{self.strategy}' is not one of {', '.join(DECODING_STRATEGIES)}")
        if self.temperature <= 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ValueError("decoding: temperature must be > 0, top_k >= 0 and top_p in (0, 1]")

    @property
    def greedy(self) -> bool:
        return self.strategy == "greedy"


GREEDY = Decoding()


@dataclass
class GenerationOutput:
    """One request's result: generated token ids and when each reached the host.

    ``start`` is ``time.perf_counter()`` taken right before the request was handed to
    the engine (for a batched call: the call's start, shared by its requests).
    ``token_times[i]`` is ``time.perf_counter()`` when ``tokens[i]`` was on the host;
    requests of one batched call get the same time for the same step. ``prompt_tokens``
    is the prompt's length (without padding).
    """

    tokens: list[int]
    token_times: list[float]
    start: float
    prompt_tokens: int

    def problem(self) -> Optional[str]:
        """Why these timestamps cannot be trusted, or None: the scenario checks every output."""
        if not self.tokens:
            return "no token generated"
        if len(self.tokens) != len(self.token_times):
            return f"{len(self.tokens)} tokens but {len(self.token_times)} timestamps"
        if self.token_times[0] < self.start:
            return "first token time is before the request start"
        if any(b < a for a, b in zip(self.token_times, self.token_times[1:])):
            return "token timestamps go backwards"
        return None


@dataclass(frozen=True)
class GenerationPlan:
    """The shapes and precision a session is prepared for (engines may specialise on them).

    ``max_batch_size`` prompts per call at most, each at most ``max_prompt_len`` tokens,
    at most ``max_new_tokens`` generated; ``precision`` is the compute precision
    (``fp32``, ``bf16``...), refused with ``Unsupported`` when the backend lacks it.
    ``int8``/``int4`` come with ``weights``, the weight-only recipe to realise
    (:class:`harness.compression.recipes.WeightRecipe`; activations stay float): the
    backend compresses its fp32 form through
    :func:`harness.compression.pipeline.compress_decoder` (cached), puts the stage's
    figures into ``source.stages["compression"]`` and refuses, with ``Unsupported``, a
    recipe it cannot realise exactly.
    """

    precision: str = "fp32"
    max_batch_size: int = 1
    max_prompt_len: int = 128
    max_new_tokens: int = 64
    weights: Optional["WeightRecipe"] = None


@dataclass
class DecoderSource:
    """The decoder model a backend prepares, in the forms it may consume.

    ``module`` is the transformers causal LM (eval mode, fp32, on the CPU: the eager
    reference; a backend that changes it works on a copy), ``config`` its config dict,
    ``tokenizer`` the tokenizer the prompts were made with. The other forms are built
    on demand by the core's artifact stages, cached by content and validated:

    * :meth:`onnx` -- the decoder exported to ONNX with past-key-value inputs and
      outputs (``harness.generation.onnx_export``), validated against eager logits;
    * :meth:`folder` -- a ``save_pretrained`` folder (safetensors + config + tokenizer)
      for engines that convert from one (OpenVINO tokenizers, GGUF converters).

    Each stage's figures (seconds, cached, size, max abs diff) land in ``stages`` and the
    scenario puts them into the record.
    """

    name: str
    module: Any
    config: dict[str, Any]
    tokenizer: Any
    params: int
    weights_digest: str
    cache_root: Optional[str] = None
    status: Callable[[str], None] = print
    stages: dict[str, Any] = field(default_factory=dict)
    #: The backend's folders for this run (its own cache, a work folder): set by the scenario.
    workspace: Optional[Workspace] = None
    _onnx: Optional[Path] = None
    _folder: Optional[Path] = None

    def onnx(self) -> Path:
        """The ONNX decoder with past key/values (exported once, cached, validated)."""
        if self._onnx is None:
            from harness.generation.onnx_export import export_decoder

            result = export_decoder(self, on_status=self.status)
            self.stages["export"] = result.metrics()
            self._onnx = result.path
        return self._onnx

    def folder(self) -> Path:
        """A ``save_pretrained`` folder of the model and its tokenizer (cached by weights)."""
        if self._folder is None:
            from harness.generation.decoders import saved_folder

            self._folder = saved_folder(self)
        return self._folder


class GenerationSession(abc.ABC):
    """A decoder prepared on a device; reusable: every ``generate`` call starts afresh.

    Contract (checked by the scenario and ``tests/test_generation_backends.py``):

    * ``generate`` returns one :class:`GenerationOutput` per prompt, in order; each has
      exactly ``max_new_tokens`` tokens: an end-of-sequence token does not stop it, so
      every backend does the same work (an engine that cannot be told so may return
      fewer; the formulas use the real counts).
    * Prompts of one call may differ in length; the session left-pads them itself.
    * Greedy decoding is the arg-max at every step, so its tokens match eager fp32
      PyTorch up to numerical ties; with a KV cache the tokens equal those of a full
      recompute without one.
    * Timestamps are taken on the host after the step's result is there: on an
      asynchronous device, after a sync; never reconstructed afterwards.
    """

    device: str = "cpu"

    @abc.abstractmethod
    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, decoding: Decoding = GREEDY) -> list[GenerationOutput]:
        """Generate ``max_new_tokens`` tokens after each prompt (token-id lists), timed per token."""

    def score(self, ids: np.ndarray) -> np.ndarray:
        """Log-probabilities of each next token: ``ids`` int64 ``(batch, T)`` ->
        float ``(batch, T - 1)`` where ``[b, t] = log p(ids[b, t + 1] | ids[b, :t + 1])``.

        Optional. The default raises ``Unsupported``, and the run reports no perplexity.
        """
        raise Unsupported(f"{type(self).__name__} cannot score tokens (no logits or log-probs)", "perplexity needs a backend whose session implements score()")

    def begin_measurement(self) -> None:
        """Called once, after the warm-up calls: forget anything accumulated for
        :meth:`metrics` so far (an engine's own timings must cover the measured calls only)."""

    def memory(self) -> dict[str, float]:
        """Peak memory figures in MiB the backend can measure (may be empty)."""
        return {}

    def metrics(self) -> dict[str, Any]:
        """Engine facts for ``metrics.backend`` (engine name, cache layout, its own timings
        over the measured calls)."""
        return {}

    def close(self) -> None:
        """Release the engine. Calling it twice is harmless."""


def now() -> float:
    """The clock every timestamp of the contract is read from."""
    return time.perf_counter()


def check_outputs(outputs: Sequence[GenerationOutput], prompts: int, backend: str) -> None:
    """Raise a one-line error unless a session honoured the contract for one call."""
    if len(outputs) != prompts:
        raise HarnessError(
            f"backend '{backend}' returned {len(outputs)} outputs for {prompts} prompts", "a GenerationSession returns one GenerationOutput per prompt"
        )
    for index, output in enumerate(outputs):
        problem = output.problem()
        if problem:
            raise HarnessError(
                f"backend '{backend}' request {index}: {problem}", "timestamps must be time.perf_counter() taken when each token reached the host"
            )
