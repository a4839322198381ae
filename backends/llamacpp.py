"""``backend=llamacpp``: llama.cpp in process, through llama-cpp-python.

The decoder checkpoint (the harness model's saved folder, or ``model.path``) becomes a
GGUF file with llama.cpp's own converter and quantizer (:mod:`harness.serving.gguf`:
``fp32``/``fp16``/``bf16`` converted, ``int8`` = q8_0 and ``int4`` = q4_K_M quantized),
cached by content, and runs in this process:

- generation (``+scenario=llm_fp32``...): the :class:`GenerationSession` contract; the
  prompts of one call run one after another (llama-cpp-python's ``Llama`` decodes one
  sequence), each token timed on the host the moment ``Llama.generate`` yields it;
- serving (``+scenario=llm_serve``): a FIFO session (one request at a time in a worker
  thread), the honest picture of an engine without batching; llama.cpp's batching
  server is measured through ``backend=openai`` and ``scripts/llm-server/start-llamacpp.sh``.

Each request starts from an empty KV cache (``Llama.reset``): llama-cpp-python would
otherwise reuse the prefix a previous prompt left in the cache and time less prefill
than the request needs. Greedy decoding is llama.cpp's greedy sampler (``temp=0``);
end-of-sequence never stops a request (``generate`` yields until told to stop).
Perplexity uses a second ``Llama`` with ``logits_all`` (so generation pays nothing for it).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from harness.backend import Artifact, Availability, Backend, Capabilities, Session
from harness.config import require
from harness.errors import ConfigError, HarnessError, Unsupported, exception_line
from harness.generation.session import GREEDY, Decoding, DecoderSource, GenerationOutput, GenerationPlan, GenerationSession, now
from harness.hookspecs import hookimpl
from harness.serving.inprocess import FIFO
from harness.serving.gguf import GGUF_TYPES, LLAMACPP_VERSION, converter_dir, gguf_for
from harness.serving.session import Emit, GenerationRequest, ServingModel, ServingPlan, StreamEnd, ThreadedSession, TokenChunk, Tokenizer

#: What ``scenario.precision=auto`` means here: llama.cpp's usual deployment type.
DEFAULT_PRECISION = "fp16"


@dataclass
class LlamaCppOptions:
    """``backend=llamacpp`` options (see conf/backend/llamacpp.yaml)."""

    threads: int = 0
    n_ctx: int = 2048
    n_batch: int = 512
    flash_attn: bool = False

    def __post_init__(self) -> None:
        require(self.threads >= 0, "threads", f"must be >= 0 (0 = every core), got {self.threads}")
        require(self.n_ctx >= 16, "n_ctx", f"must be >= 16 tokens, got {self.n_ctx}")
        require(self.n_batch >= 1, "n_batch", f"must be >= 1, got {self.n_batch}")

    @property
    def thread_count(self) -> int:
        return self.threads or os.cpu_count() or 1


class LlamaEngine:
    """One GGUF loaded by llama-cpp-python; decodes one sequence at a time (a lock guards it)."""

    def __init__(self, path: Path, options: LlamaCppOptions, logits_all: bool = False) -> None:
        from llama_cpp import Llama

        self.path = path
        self.options = options
        self.llm = Llama(
            model_path=str(path),
            n_ctx=options.n_ctx,
            n_batch=options.n_batch,
            n_threads=options.thread_count,
            n_threads_batch=options.thread_count,
            flash_attn=options.flash_attn,
            logits_all=logits_all,
            verbose=False,
        )
        self.lock = threading.Lock()

    def check_fits(self, prompt_tokens: int, new_tokens: int) -> None:
        if prompt_tokens + new_tokens > self.options.n_ctx:
            raise ConfigError(
                f"prompt ({prompt_tokens}) + new tokens ({new_tokens}) exceed llama.cpp's context of {self.options.n_ctx}",
                "raise backend.n_ctx or shorten the prompts / outputs",
            )

    def stream(self, prompt: Sequence[int], max_tokens: int, decoding: Decoding, on_token: Callable[[int, float], None]) -> int:
        """Decode ``max_tokens`` tokens after ``prompt`` from an empty cache; ``on_token(id, host time)``
        for each, the moment llama.cpp hands it over. Returns the number generated."""
        self.check_fits(len(prompt), max_tokens)
        sampling = dict(temp=0.0, top_k=1) if decoding.greedy else dict(temp=decoding.temperature, top_k=decoding.top_k, top_p=decoding.top_p, min_p=0.0)
        with self.lock:
            self.llm.reset()  # no prefix reuse from the previous request: every request pays its prefill
            if not decoding.greedy:
                self.llm.set_seed(decoding.seed)
            generated = 0
            tokens = self.llm.generate(list(prompt), repeat_penalty=1.0, **sampling)
            try:
                for token in tokens:
                    on_token(int(token), now())
                    generated += 1
                    if generated >= max_tokens:
                        break
            finally:
                tokens.close()
        return generated

    def score(self, ids: np.ndarray) -> np.ndarray:
        """``[b, t] = log p(ids[b, t + 1] | ids[b, :t + 1])`` (needs ``logits_all``)."""
        rows = []
        with self.lock:
            for row in np.asarray(ids, dtype=np.int64):
                self.check_fits(len(row), 0)
                self.llm.reset()
                self.llm.eval(row.tolist())
                logits = np.asarray(self.llm.scores[: len(row) - 1], dtype=np.float64)
                shifted = logits - logits.max(axis=-1, keepdims=True)
                logprobs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
                rows.append(logprobs[np.arange(len(row) - 1), row[1:]])
        return np.stack(rows)

    def perf(self) -> dict[str, Any]:
        """llama.cpp's own prompt/eval counters since the last reset (its cross-check of our timing)."""
        import llama_cpp

        try:
            data = llama_cpp.llama_perf_context(self.llm._ctx.ctx)
        except Exception as exc:  # an older binding without the perf API: say so, measure anyway
            return {"unavailable": exception_line(exc, 200)}
        return {
            "prompt_eval_ms": data.t_p_eval_ms,
            "prompt_tokens": data.n_p_eval,
            "eval_ms": data.t_eval_ms,
            "eval_tokens": data.n_eval,
            "eval_tokens_per_s": data.n_eval / data.t_eval_ms * 1000.0 if data.t_eval_ms > 0 else None,
        }

    def reset_perf(self) -> None:
        import llama_cpp

        try:
            llama_cpp.llama_perf_context_reset(self.llm._ctx.ctx)
        except Exception:  # noqa: BLE001 - figures only, never the run
            pass

    def close(self) -> None:
        self.llm.close()


class LlamaTokenizer:
    """The GGUF's own vocabulary (no BOS, no special-token parsing): exact prompt lengths."""

    def __init__(self, engine: LlamaEngine) -> None:
        self.engine = engine

    def encode(self, text: str) -> list[int]:
        return list(self.engine.llm.tokenize(text.encode(), add_bos=False, special=False))

    def decode(self, ids: Sequence[int]) -> str:
        return self.engine.llm.detokenize(list(ids)).decode(errors="replace")


class _Scorer:
    """Perplexity through a second engine with ``logits_all``, built on first use."""

    def __init__(self, path: Path, options: LlamaCppOptions) -> None:
        self.path, self.options = path, options
        self._engine: Optional[LlamaEngine] = None

    def score(self, ids: np.ndarray) -> np.ndarray:
        if self._engine is None:
            self._engine = LlamaEngine(self.path, self.options, logits_all=True)
        return self._engine.score(ids)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None


def _facts(engine: LlamaEngine, stage: dict[str, Any], batching: str) -> dict[str, Any]:
    return {
        "engine": f"llama.cpp via llama-cpp-python {LLAMACPP_VERSION}",
        "batching": batching,
        "threads": engine.options.thread_count,
        "n_ctx": engine.options.n_ctx,
        "flash_attn": engine.options.flash_attn,
        "gguf": stage,
    }


class LlamaCppGenerationSession(GenerationSession):
    """The generation contract over one engine: prompts of a call decode one after another."""

    def __init__(self, engine: LlamaEngine, stage: dict[str, Any]) -> None:
        self.engine = engine
        self.stage = stage
        self.scorer = _Scorer(engine.path, engine.options)

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, decoding: Decoding = GREEDY) -> list[GenerationOutput]:
        start = now()
        outputs = []
        for prompt in prompts:
            tokens: list[int] = []
            times: list[float] = []
            self.engine.stream(prompt, max_new_tokens, decoding, lambda token, t: (tokens.append(token), times.append(t)))
            outputs.append(GenerationOutput(tokens, times, start, len(prompt)))
        return outputs

    def score(self, ids: np.ndarray) -> np.ndarray:
        return self.scorer.score(ids)

    def begin_measurement(self) -> None:
        self.engine.reset_perf()

    def metrics(self) -> dict[str, Any]:
        facts = _facts(self.engine, self.stage, "none: the prompts of one call decode one after another")
        facts["llama_perf"] = self.engine.perf()
        return facts

    def close(self) -> None:
        self.scorer.close()
        self.engine.close()


class LlamaCppServingSession(ThreadedSession):
    """Streamed requests served FIFO by one engine in one worker thread."""

    def __init__(self, engine: LlamaEngine, stage: dict[str, Any], precision: str) -> None:
        super().__init__(workers=1)
        self.engine = engine
        self.stage = stage
        self.precision = precision
        self._scorer = _Scorer(engine.path, engine.options)
        self._tokenizer = LlamaTokenizer(engine)

    def generate(self, request: GenerationRequest, emit: Emit) -> StreamEnd:
        prompt = list(request.prompt_ids) or self._tokenizer.encode(request.prompt)
        decoding = GREEDY
        count = self.engine.stream(prompt, request.max_tokens, decoding, lambda token, t: emit(TokenChunk(t, ids=(token,))))
        return StreamEnd(now(), prompt_tokens=len(prompt), output_tokens=count, finish_reason="length")

    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    def scorer(self) -> Any:
        return self._scorer

    def metrics(self) -> dict[str, Any]:
        return {
            **_facts(self.engine, self.stage, "none: one request at a time (FIFO) in one worker thread (llama-cpp-python's Llama decodes one sequence)"),
            "concurrency": FIFO,
        }

    async def aclose(self) -> None:
        await super().aclose()
        self._scorer.close()
        self.engine.close()


#: What llama.cpp's GGUF types for the weight-only precisions are (its quantization docs).
GGUF_WEIGHTS = {
    "q8_0": "int8 (symmetric, blocks of 32 weights with an fp16 scale)",
    "q4_K_M": "int4 (q4_K: super-blocks of 256 in sub-blocks of 32 with 6-bit scales and mins; "
    "llama.cpp's M mix keeps some attention-value and FFN-down tensors at q6_K)",
}


def check_weight_recipe(recipe: Any) -> None:
    """llama.cpp's GGUF types fix their block layout and mix: refuse what they cannot honour."""
    if recipe.group_size is not None or recipe.ratio != 1:
        kind = GGUF_TYPES[recipe.precision]
        raise Unsupported(
            f"llama.cpp's {kind} fixes its blocks and its mix; group_size={recipe.group_size} and ratio={recipe.ratio} cannot be applied",
            "leave scenario.quantization.group_size null and ratio 1.0 with backend=llamacpp",
        )


def weight_stage(recipe: Any, gguf: dict[str, Any], folder: Path) -> dict[str, Any]:
    """``metrics.compression`` of a quantized GGUF, beside the fp32 safetensors it came from."""
    from harness.compression.pipeline import decoder_stage

    realised = {
        "name": recipe.name,
        "tool": "llama.cpp llama_model_quantize (from the f16 GGUF)",
        "gguf_type": gguf["gguf_type"],
        "weights": GGUF_WEIGHTS[gguf["gguf_type"]],
        "group_size": 32,
        "ratio": 1.0,
        "activations": "fp32 between layers; ggml quantizes them to q8 blocks inside each quantized matmul",
        "calibrated": False,
    }
    stage = decoder_stage(recipe, realised, gguf["seconds"], gguf["cached"], None, gguf["size_bytes"])
    fp32 = sum(path.stat().st_size for path in Path(folder).glob("*.safetensors"))
    return {**stage, "fp32_size_bytes": fp32, "fp32_artifact": "the fp32 safetensors checkpoint"}


class LlamaCppBackend(Backend):
    name = "llamacpp"
    options_type = LlamaCppOptions

    @classmethod
    def probe(cls, options: LlamaCppOptions) -> Availability:
        try:
            import llama_cpp
        except ImportError as exc:
            return Availability(
                False, f"llama-cpp-python is not installed ({exception_line(exc, 120)}); pip install 'harness[llamacpp]' (builds from source: cmake, g++)"
            )
        except OSError as exc:  # the shared library failed to load
            return Availability(False, f"llama-cpp-python's library does not load: {exception_line(exc, 200)}")
        versions = {"llamacpp": llama_cpp.__version__, "llama_cpp_python": llama_cpp.__version__}
        try:
            converter_dir()
        except HarnessError as exc:
            return Availability(False, exc.one_line(), versions=versions)
        return Availability(True, devices=("cpu",), versions=versions)

    def capabilities(self) -> Capabilities:
        return Capabilities(precisions=frozenset(GGUF_TYPES), consumes=("gguf",), generation=True)

    def version(self) -> str:
        import llama_cpp

        return llama_cpp.__version__

    def prepare(self, artifact: Artifact, precision: str) -> Session:
        raise Unsupported("backend 'llamacpp' runs decoder LLMs only (GGUF)", "use +scenario=llm_fp32 (generation) or +scenario=llm_serve (serving)")

    def _engine(self, folder: Path, precision: str, cache_root: Optional[str], status: Callable[[str], None]) -> tuple[LlamaEngine, dict[str, Any]]:
        path, stage = gguf_for(folder, precision, cache_root, status)
        status(f"loading {path.name} ({stage['gguf_type']}, {stage['size_bytes'] / 2**20:.1f} MiB) into llama.cpp")
        return LlamaEngine(path, self.options), stage

    def prepare_generation(self, source: DecoderSource, plan: GenerationPlan) -> GenerationSession:
        self.check_precision(plan.precision)
        if plan.weights is not None:
            check_weight_recipe(plan.weights)
        engine, stage = self._engine(source.folder(), plan.precision, source.cache_root, source.status)
        source.stages["gguf"] = stage
        if plan.weights is not None:
            source.stages["compression"] = weight_stage(plan.weights, stage, source.folder())
        engine.check_fits(plan.max_prompt_len, plan.max_new_tokens)
        return LlamaCppGenerationSession(engine, stage)

    def prepare_serving(self, model: ServingModel, plan: ServingPlan) -> LlamaCppServingSession:
        precision = DEFAULT_PRECISION if plan.precision == "auto" else plan.precision
        self.check_precision(precision)
        source = model.source()
        engine, stage = self._engine(source.folder(), precision, model.cache_root, model.status)
        return LlamaCppServingSession(engine, stage, precision)


@hookimpl
def harness_register_backends(registry: Any) -> None:
    registry.add_backend(LlamaCppBackend)
