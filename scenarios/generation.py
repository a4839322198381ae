"""Generation scenario: decoder LLMs generating tokens, timed per token, scored beside fp32.

Flow: the backend declares generation (else ``unsupported`` before any model is built)
-> decoder model (random init or a local causal-LM folder) and its tokenizer (the
folder's own, else the embedded byte-level BPE) -> prompts: ``prompts`` distinct windows
of ``prompt_len`` tokens from the corpus's eval split -> ``backend.prepare_generation``
(the backend pulls the ONNX export or a saved folder from the source as it needs) ->
``warmup_iters`` calls -> calls of ``batch_size`` prompts, cycling through the prompts,
until ``min_iters`` calls *and* ``min_duration_s`` (or ``max_duration_s``) -> timing
from the per-token timestamps (:mod:`harness.generation.timing`) -> perplexity on
``accuracy.limit`` eval windows and greedy agreement with eager fp32
(:mod:`harness.generation.quality`) -> metrics. Options and record fields: docs/llm.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from harness.accuracy import AccuracyGate
from harness.columns import Column
from harness.compression.recipes import WEIGHT_BITS, WeightRecipe
from harness.config import choice, require
from harness.errors import ConfigError, Mismatch
from harness.generation import corpus, decoders, quality, timing
from harness.generation.session import DECODING_STRATEGIES, Decoding, DecoderSource, GenerationOutput, GenerationPlan, check_outputs, now
from harness.generation.tokenizer import text_tokenizer
from harness.hardware import host_memory_mib
from harness.hookspecs import hookimpl
from harness.scenario import RunContext, Scenario, ScenarioResult

PRECISIONS = ("fp32", "bf16", "fp16", *WEIGHT_BITS)
#: Bytes of one KV-cache element at each precision (the cache is kept at compute precision;
#: int8/int4 compress weights only, so activations and the cache stay fp32).
KV_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 4, "int4": 4}


@dataclass
class SamplingOptions:
    """``scenario.sampling.*``, used when ``scenario.decoding=sample``."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.temperature > 0, "sampling.temperature", f"must be > 0, got {self.temperature}")
        require(self.top_k >= 0, "sampling.top_k", f"must be >= 0 (0 = all tokens), got {self.top_k}")
        require(0 < self.top_p <= 1, "sampling.top_p", f"must be in (0, 1], got {self.top_p}")


@dataclass
class GenerationAccuracyOptions:
    """``scenario.accuracy.*``: perplexity on ``limit`` eval windows of ``window`` tokens.

    ``min_relative``: the run is ``mismatch`` when fp32-reference / perplexity falls below it.
    """

    enabled: bool = True
    limit: int = 8
    window: int = 128
    min_relative: Optional[float] = None

    def __post_init__(self) -> None:
        require(self.limit >= 1, "accuracy.limit", f"must be >= 1 eval window, got {self.limit}")
        require(self.window >= 2, "accuracy.window", f"must be >= 2 tokens, got {self.window}")
        require(self.min_relative is None or 0 < self.min_relative <= 1.5, "accuracy.min_relative", f"must be in (0, 1.5] or null, got {self.min_relative}")


@dataclass
class WeightQuantizationOptions:
    """``scenario.quantization.*`` of the weight-only runs (``precision`` int8 or int4).

    ``group_size``: weights sharing one scale and zero point along the input dimension
    (null = the backend's default, -1 = per output channel); ``ratio``: int4's share of
    the weights, the rest int8. See :class:`harness.compression.recipes.WeightRecipe`.
    """

    group_size: Optional[int] = None
    ratio: float = 1.0


@dataclass
class GenerationOptions:
    """``scenario.*`` keys of ``kind: generation``.

    ``batch_size`` prompts per call, each ``prompt_len`` tokens, ``new_tokens`` generated
    per prompt; ``prompts`` distinct prompts are cycled through. ``warmup_iters`` and
    ``min_iters`` count calls (requests = calls x ``batch_size``). ``seq_len`` is the
    prompt length under the name every record and report row uses (the YAML sets it to
    ``prompt_len``; any other value is an error).
    """

    precision: str = "fp32"
    batch_size: int = 1
    prompt_len: int = 128
    new_tokens: int = 64
    prompts: int = 5
    decoding: str = "greedy"
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    warmup_iters: int = 1
    min_iters: int = 5
    min_duration_s: float = 5.0
    max_duration_s: float = 120.0
    keep_samples: bool = True
    seq_len: Optional[int] = None
    accuracy: GenerationAccuracyOptions = field(default_factory=GenerationAccuracyOptions)
    quantization: WeightQuantizationOptions = field(default_factory=WeightQuantizationOptions)

    def __post_init__(self) -> None:
        choice(self.precision, PRECISIONS, "precision")
        choice(self.decoding, DECODING_STRATEGIES, "decoding")
        for key in ("batch_size", "prompt_len", "new_tokens", "prompts", "min_iters"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")
        require(self.warmup_iters >= 0, "warmup_iters", f"must be >= 0, got {self.warmup_iters}")
        require(self.min_duration_s >= 0, "min_duration_s", f"must be >= 0, got {self.min_duration_s}")
        require(self.max_duration_s >= self.min_duration_s, "max_duration_s", f"must be >= min_duration_s ({self.min_duration_s}), got {self.max_duration_s}")
        require(self.seq_len in (None, self.prompt_len), "seq_len", f"is the prompt length in generation ({self.prompt_len}); set scenario.prompt_len instead")
        require(
            self.precision in WEIGHT_BITS or self.quantization == WeightQuantizationOptions(),
            "quantization",
            f"compresses weights to int8/int4, not {self.precision}; use +scenario=llm_int8 or llm_int4",
        )
        self.weight_recipe()  # validates group_size and ratio against the precision

    def weight_recipe(self) -> Optional[WeightRecipe]:
        """The weight-only recipe of an int8/int4 run (None for float precisions)."""
        if self.precision not in WEIGHT_BITS:
            return None
        return WeightRecipe(self.precision, self.quantization.group_size, self.quantization.ratio)

    def decoding_options(self) -> Decoding:
        s = self.sampling
        return Decoding(self.decoding, s.temperature, s.top_k, s.top_p, s.seed)


def _check_sizes(opts: GenerationOptions, config: dict[str, Any], tokenizer: Any, name: str) -> None:
    """Refuse, in one line, shapes the model cannot hold."""
    limit = decoders.max_positions(config)
    longest = max(opts.prompt_len + opts.new_tokens, opts.accuracy.window if opts.accuracy.enabled else 0)
    if limit is not None and longest > limit:
        raise ConfigError(
            f"{name} attends to {limit} positions; prompt_len + new_tokens (or accuracy.window) is {longest}",
            "lower scenario.prompt_len / scenario.new_tokens / scenario.accuracy.window",
        )
    if len(tokenizer) > decoders.vocab_size(config):
        raise ConfigError(
            f"the tokenizer has {len(tokenizer)} tokens but {name}'s vocabulary only {decoders.vocab_size(config)}",
            "raise model.config.vocab_size, or use a model folder with its own tokenizer",
        )


class GenerationScenario(Scenario):
    kind = "generation"
    options_type = GenerationOptions
    record_section = "generation"
    report_columns = (
        Column("metrics.generation.ttft_ms.p50", "TTFT p50 (ms)", "number", "lower"),
        Column("metrics.generation.tpot_ms.p50", "TPOT p50 (ms)", "number", "lower"),
        Column("metrics.generation.itl_ms.p99", "ITL p99 (ms)", "number", "lower"),
        Column("metrics.generation.decode_tokens_per_s", "Decode tok/s", "number", "higher"),
        Column("metrics.generation.output_tokens_per_s", "Output tok/s", "number", "higher"),
        Column("metrics.accuracy.agreement", "Greedy agreement", "percent", "higher"),
        # weight-only int8/int4: the artifact's size beside the fp32 one it came from
        Column("metrics.compression.size_ratio", "Size vs fp32", "percent", "lower", when="metrics.compression.size_ratio"),
        Column(
            "metrics.generation.decode_tokens_per_s",
            "Decode speedup vs fp32",
            "ratio",
            "higher",
            vs={"scenario.precision": "fp32"},
            when="metrics.compression.size_ratio",
        ),
    )

    def run(self, ctx: RunContext) -> ScenarioResult:
        opts: GenerationOptions = self.options
        backend = ctx.backend
        backend.check_generation()
        family = ctx.spec.model.family
        if not decoders.is_decoder(family):
            raise ConfigError(
                f"model '{ctx.spec.model.name}' (family {family}) is not a decoder LLM",
                f"use a decoder model: model=llama_tiny, llama_small, llama_1b or gpt2 (families {', '.join(decoders.DECODER_FAMILIES)})",
            )
        text = corpus.load_corpus(ctx.spec.dataset)
        model = ctx.load_model()
        tokenizer = text_tokenizer(family, model.tokenizer, ctx.cache_root)
        _check_sizes(opts, model.config, tokenizer, model.name)
        stream = corpus.token_stream(tokenizer, text.eval)
        pool = corpus.windows(stream, opts.prompt_len, opts.prompts)
        source = DecoderSource(
            model.name, model.module, model.config, tokenizer, model.params, model.weights_digest(), ctx.cache_root, ctx.status, workspace=ctx.workspace
        )
        plan = GenerationPlan(opts.precision, opts.batch_size, opts.prompt_len, opts.new_tokens, opts.weight_recipe())
        ctx.status(f"preparing {backend.name} generation session ({opts.precision})")
        session = backend.prepare_generation(source, plan)
        try:
            calls, greedy = self._measure(ctx, session, pool)
            metrics: dict[str, Any] = dict(source.stages)
            compression = metrics.get("compression")
            if compression and compression.get("fp32_size_bytes"):  # weight-only: size beside the fp32 artifact
                compression["size_ratio"] = compression["size_bytes"] / compression["fp32_size_bytes"]
            metrics["generation"] = timing.generation_metrics(calls, opts.keep_samples)
            metrics["throughput"] = self._throughput(metrics["generation"])
            layout = decoders.kv_layout(model.config)
            metrics["generation"]["kv_cache_bytes"] = layout.bytes(opts.batch_size, opts.prompt_len + opts.new_tokens, KV_BYTES[opts.precision])
            metrics["memory_mib"] = {**host_memory_mib(), **session.memory()}
            metrics["backend"] = session.metrics()
            if opts.accuracy.enabled:
                metrics["accuracy"] = self._accuracy(ctx, session, source, stream, pool, greedy)
        finally:
            session.close()
        problem = AccuracyGate(opts.accuracy.min_relative).problem(metrics["accuracy"]) if opts.accuracy.enabled else None
        if problem:
            raise Mismatch(f"{backend.name} {opts.precision}: {problem}", "use a precision closer to fp32 or lower scenario.accuracy.min_relative")
        return ScenarioResult(
            precision=opts.precision,
            metrics=metrics,
            batch_size=opts.batch_size,
            seq_len=opts.prompt_len,
            model={"params": model.params, "source": model.source},
            backend={"device": session.device},
        )

    def _call(self, session: Any, pool: np.ndarray, index: int, name: str) -> tuple[list[int], list[GenerationOutput]]:
        """Call number ``index``: the next ``batch_size`` prompts of the pool, cyclically."""
        opts: GenerationOptions = self.options
        rows = [(index * opts.batch_size + j) % len(pool) for j in range(opts.batch_size)]
        outputs = session.generate([pool[r].tolist() for r in rows], opts.new_tokens, opts.decoding_options())
        check_outputs(outputs, len(rows), name)
        return rows, outputs

    def _measure(self, ctx: RunContext, session: Any, pool: np.ndarray) -> tuple[list[list[GenerationOutput]], dict[int, list[int]]]:
        """Warm-up calls, then measured calls until both minimums (or the maximum duration)."""
        opts: GenerationOptions = self.options
        name = ctx.backend.name
        ctx.status(
            f"measuring: {opts.warmup_iters} warm-up calls, then >= {opts.min_iters} calls of {opts.batch_size} "
            f"x ({opts.prompt_len} prompt + {opts.new_tokens} new tokens) and >= {opts.min_duration_s:g} s"
        )
        for index in range(opts.warmup_iters):
            self._call(session, pool, index, name)
        session.begin_measurement()
        calls: list[list[GenerationOutput]] = []
        greedy: dict[int, list[int]] = {}
        started = now()
        while True:
            rows, outputs = self._call(session, pool, len(calls), name)
            calls.append(outputs)
            for row, output in zip(rows, outputs):
                greedy.setdefault(row, output.tokens)
            elapsed = now() - started
            if ctx.progress is not None:
                ctx.progress("measuring", len(calls), elapsed)
            if elapsed >= opts.max_duration_s or (len(calls) >= opts.min_iters and elapsed >= opts.min_duration_s):
                return calls, greedy

    @staticmethod
    def _throughput(gen: dict[str, Any]) -> dict[str, Any]:
        """``metrics.throughput``: requests/s as samples, generated tokens/s as tokens (never prompt x batch)."""
        return {
            "samples_per_s": gen["requests_per_s"],
            "tokens_per_s": gen["output_tokens_per_s"],
            "unit": "samples = requests; tokens = generated tokens (output_tokens_per_s)",
        }

    def _accuracy(
        self, ctx: RunContext, session: Any, source: DecoderSource, stream: np.ndarray, pool: np.ndarray, greedy: dict[int, list[int]]
    ) -> dict[str, Any]:
        opts: GenerationOptions = self.options
        acc = opts.accuracy
        windows = corpus.windows(stream, acc.window, acc.limit)
        ctx.status(f"scoring perplexity on {len(windows)} eval windows of {acc.window} tokens beside eager fp32 (cached)")
        rows = sorted(greedy)
        tokens = np.asarray([greedy[r] for r in rows]) if opts.decoding == "greedy" else None
        return quality.accuracy_metrics(session, source, windows, pool[rows], tokens, opts.batch_size, ctx.cache_root)


@hookimpl
def harness_register_scenarios(registry: Any) -> None:
    registry.add_scenario(GenerationScenario)
