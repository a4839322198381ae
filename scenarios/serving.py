"""``kind: serving``: an LLM under load (``+scenario=llm_serve``).

Flow: the backend prepares a streaming serving session (a remote OpenAI-compatible
server, or an in-process engine) -> a seeded workload is cut from the eval split ->
warm-up requests -> one or more *steps* of load (``scenario.load``):

- ``server``: Poisson arrivals at ``scenario.server.rate`` req/s (open loop);
- ``concurrency``: ``scenario.concurrency`` requests always in flight (closed loop);
- ``sweep``: guidellm's sweep in ``scenario.sweep.steps`` steps: synchronous, then
  throughput (saturation), then fixed rates evenly spaced between the two;

then, with ``scenario.search.enabled``, a bisection for the highest rate meeting the
SLOs. Every step records per-request arrays (TTFT, TPOT, ITL, e2e, tokens) and its
figures (request throughput, output tokens/s, goodput, p99 verdict) under
``metrics.serving.steps``; the session's description of how it serves (batching,
slots, endpoint, retries) goes to ``metrics.backend``. The work lives in
:mod:`harness.serving`; this module only orders it.

A server that goes away mid-run ends the run ``failed`` with the reason, and the
record keeps every request that finished (``metrics.serving`` of the steps so far).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace
from typing import Any, Optional

from harness.columns import Column
from harness.config import choice, require
from harness.errors import ConfigError, HarnessError, Unsupported
from harness.hookspecs import hookimpl
from harness.scenario import RunContext, Scenario, ScenarioResult
from harness.serving.figures import SLO, step_figures
from harness.serving.load import Limits, Load, StepResult, run_step
from harness.serving.session import GenerationRequest, ServingModel, ServingPlan, ServingSession, Tokenizer
from harness.serving.sweep import search_max_rate, sweep_rates, synchronous, throughput
from harness.serving.workload import PlainTokenizer, PromptPool, WorkloadOptions, build_requests, load_tokenizer

LOADS = ("server", "concurrency", "sweep")
ARRIVALS = ("poisson", "constant")
PRECISIONS = ("auto", "server", "fp32", "fp16", "bf16", "int8", "int4")


@dataclass
class ServerLoadOptions:
    """``scenario.server.*``: the open-loop load (``scenario.load=server``)."""

    rate: float = 1.0
    arrivals: str = "poisson"

    def __post_init__(self) -> None:
        require(self.rate > 0, "server.rate", f"must be > 0 requests/s, got {self.rate}")
        choice(self.arrivals, ARRIVALS, "server.arrivals")


@dataclass
class SweepOptions:
    """``scenario.sweep.*``: synchronous, throughput at ``max_concurrency``, then
    ``steps - 2`` fixed rates between the two measured rates."""

    steps: int = 5
    max_concurrency: int = 8
    arrivals: str = "poisson"

    def __post_init__(self) -> None:
        require(self.steps >= 2, "sweep.steps", f"must be >= 2 (synchronous and throughput), got {self.steps}")
        require(self.max_concurrency >= 1, "sweep.max_concurrency", f"must be >= 1, got {self.max_concurrency}")
        choice(self.arrivals, ARRIVALS, "sweep.arrivals")


@dataclass
class SearchOptions:
    """``scenario.search.*``: bisect for the highest rate whose step meets the SLOs."""

    enabled: bool = False
    trials: int = 5

    def __post_init__(self) -> None:
        require(self.trials >= 1, "search.trials", f"must be >= 1, got {self.trials}")


@dataclass
class SLOOptions:
    """``scenario.slo.*``: TTFT and TPOT objectives in ms (null = unconstrained), judged at ``percentile``."""

    ttft_ms: Optional[float] = None
    tpot_ms: Optional[float] = None
    percentile: float = 99.0

    def __post_init__(self) -> None:
        require(self.ttft_ms is None or self.ttft_ms > 0, "slo.ttft_ms", f"must be > 0 or null, got {self.ttft_ms}")
        require(self.tpot_ms is None or self.tpot_ms > 0, "slo.tpot_ms", f"must be > 0 or null, got {self.tpot_ms}")
        require(0 < self.percentile <= 100, "slo.percentile", f"must be in (0, 100], got {self.percentile}")

    def slo(self) -> SLO:
        return SLO(self.ttft_ms, self.tpot_ms, self.percentile)


@dataclass
class ServingAccuracyOptions:
    """``scenario.accuracy.*``: perplexity of the served model on ``texts`` eval texts
    (in-process engines: ``texts`` windows of ``window`` tokens, beside eager fp32)."""

    enabled: bool = True
    texts: int = 8
    window: int = 128

    def __post_init__(self) -> None:
        require(self.texts >= 1, "accuracy.texts", f"must be >= 1, got {self.texts}")
        require(self.window >= 2, "accuracy.window", f"must be >= 2 tokens, got {self.window}")


@dataclass
class ServingOptions:
    """``scenario.*`` keys of ``kind: serving`` (see conf/scenario/llm_serve.yaml)."""

    precision: str = "auto"
    load: str = "server"
    server: ServerLoadOptions = field(default_factory=ServerLoadOptions)
    concurrency: int = 4
    sweep: SweepOptions = field(default_factory=SweepOptions)
    search: SearchOptions = field(default_factory=SearchOptions)
    slo: SLOOptions = field(default_factory=SLOOptions)
    workload: WorkloadOptions = field(default_factory=WorkloadOptions)
    requests: int = 32
    max_seconds: float = 60.0
    request_timeout_s: float = 60.0
    warmup_requests: int = 2
    keep_requests: bool = True
    accuracy: ServingAccuracyOptions = field(default_factory=ServingAccuracyOptions)

    def __post_init__(self) -> None:
        choice(self.precision, PRECISIONS, "precision")
        choice(self.load, LOADS, "load")
        require(self.concurrency >= 1, "concurrency", f"must be >= 1, got {self.concurrency}")
        require(self.requests >= 1, "requests", f"must be >= 1, got {self.requests}")
        require(self.max_seconds > 0, "max_seconds", f"must be > 0, got {self.max_seconds}")
        require(self.request_timeout_s > 0, "request_timeout_s", f"must be > 0, got {self.request_timeout_s}")
        require(self.warmup_requests >= 0, "warmup_requests", f"must be >= 0, got {self.warmup_requests}")

    @property
    def limits(self) -> Limits:
        return Limits(self.requests, self.max_seconds, self.request_timeout_s)


class ServerLost(HarnessError):
    """The server or engine went away mid-run; ``metrics`` keeps what finished."""

    def __init__(self, problem: str, fix: str, metrics: dict[str, Any]) -> None:
        super().__init__(problem, fix)
        self.metrics = metrics


class ServingScenario(Scenario):
    kind = "serving"
    options_type = ServingOptions
    record_section = "serving"
    report_columns = (
        # what the engine does with concurrent requests (each serving session states it)
        Column("metrics.backend.concurrency", "Concurrency", "text"),
        # one load level (server, concurrency): its figures
        Column("metrics.serving.request_throughput", "Req/s", "number", "higher"),
        Column("metrics.serving.output_tokens_per_s", "Out tok/s", "number", "higher"),
        Column("metrics.serving.goodput", "Goodput (req/s)", "number", "higher"),
        Column("metrics.serving.verdict", "SLO", "text"),
        # a sweep: where it saturated, the best goodput, the highest VALID rate, how many steps met the SLOs
        Column("metrics.serving.saturation_rate", "Saturation (req/s)", "number", "higher"),
        Column("metrics.serving.peak_goodput", "Peak goodput (req/s)", "number", "higher"),
        Column("metrics.serving.max_valid_rate", "Max valid rate", "number", "higher"),
        Column("metrics.serving.valid_steps", "Valid steps", "text"),
        Column("metrics.serving.search.max_rate_meeting_slo", "Max rate in SLO", "number", "higher"),
    )

    def run(self, ctx: RunContext) -> ScenarioResult:
        opts: ServingOptions = self.options
        models = _ModelSources(ctx)
        model = ServingModel(ctx.spec.model.name, models.source, models.tokenizer, ctx.cache_root, ctx.status)
        ctx.status(f"preparing {ctx.backend.name} serving session ({opts.precision})")
        session = self._session(ctx, model)
        texts = prompt_texts(ctx)
        metrics: dict[str, Any] = {}

        async def measure_then_close() -> None:
            try:
                await self._measure(ctx, session, texts, metrics)
                if opts.accuracy.enabled:
                    await self._accuracy(ctx, session, models, texts, metrics)
            finally:
                await session.aclose()

        asyncio.run(measure_then_close())
        metrics.update(models.stages())
        return ScenarioResult(
            precision=session.precision,
            metrics=metrics,
            model={"source": ctx.spec.model.path or "config", **models.described()},
            backend={"device": session.device},
        )

    def _session(self, ctx: RunContext, model: ServingModel) -> ServingSession:
        """The backend's own serving session, else FIFO serving over its generation session."""
        backend = ctx.backend
        plan = self.plan()
        prepare = getattr(backend, "prepare_serving", None)
        if prepare is not None:
            return prepare(model, plan)
        if not backend.capabilities().generation:
            raise Unsupported(
                f"backend '{backend.name}' cannot serve streamed generation requests",
                "use backend=openai (any OpenAI-compatible server), llamacpp, or a backend that generates",
            )
        from harness.serving.inprocess import fifo_session

        return fifo_session(backend, model, plan)

    def plan(self) -> ServingPlan:
        """The precision and the workload's bounds a session is prepared for."""
        opts: ServingOptions = self.options
        w = opts.workload
        longest_prompt = w.prompt_tokens_max or max(w.prompt_tokens + int(4 * w.prompt_tokens_stdev), w.prompt_tokens)
        longest_output = w.output_tokens_max or max(w.output_tokens + int(4 * w.output_tokens_stdev), w.output_tokens)
        in_flight = {"concurrency": opts.concurrency, "sweep": opts.sweep.max_concurrency}.get(opts.load)
        if opts.search.enabled:  # the search's open-loop steps are unbounded
            in_flight = None
        return ServingPlan(opts.precision, longest_prompt, longest_output, in_flight)

    async def _accuracy(self, ctx: RunContext, session: ServingSession, models: "_ModelSources", texts: list[str], metrics: dict[str, Any]) -> None:
        """Perplexity beside eager fp32 for engines that score token ids; from prompt
        log-probabilities for servers that return them; else null with the reason."""
        acc: ServingAccuracyOptions = self.options.accuracy
        scorer = session.scorer()
        if scorer is not None:
            from harness.generation import corpus, quality

            source = models.source()
            windows = corpus.windows(corpus.token_stream(source.tokenizer, texts), acc.window, acc.texts)
            ctx.status(f"accuracy: perplexity on {len(windows)} eval windows of {acc.window} tokens beside eager fp32")
            loop = asyncio.get_running_loop()
            metrics["accuracy"] = await loop.run_in_executor(None, lambda: quality.accuracy_metrics(scorer, source, windows, windows, None, 1, ctx.cache_root))
            return
        ctx.status(f"accuracy: perplexity of the served model on {acc.texts} eval texts (prompt log-probabilities)")
        scored = await session.perplexity(texts[: acc.texts])
        metrics["accuracy"] = (
            None
            if scored["value"] is None
            else {"metric": "perplexity", "value": scored["value"], "reference": None, "relative": None, "agreement": None, "tokens": scored["tokens"]}
        )
        metrics["serving"]["accuracy_reason"] = scored["reason"]

    async def _measure(self, ctx: RunContext, session: ServingSession, texts: list[str], metrics: dict[str, Any]) -> None:
        opts: ServingOptions = self.options
        slo = opts.slo.slo()
        pool = PromptPool(texts, session.tokenizer())
        serving: dict[str, Any] = {"load": opts.load, "slo": slo.as_dict(), "steps": []}
        metrics["serving"] = serving
        metrics["backend"] = session.metrics()
        step_no = 0

        def requests_for(step: int) -> list[GenerationRequest]:
            workload = replace(opts.workload, seed=opts.workload.seed + 1000 * step)
            requests, described = build_requests(pool, workload, opts.requests)
            serving.setdefault("workload", described)
            return requests

        async def step(load: Load) -> dict[str, Any]:
            nonlocal step_no
            step_no += 1
            ctx.status(f"step {step_no} {load.name}: up to {opts.requests} requests, <= {opts.max_seconds:g} s")
            session.take_batch_stats()  # what came before this step (warm-up, earlier steps' stragglers) is not its
            result = await run_step(session, requests_for(step_no), load, opts.limits, seed=opts.workload.seed + step_no)
            figures = self._figures(result, slo)
            figures["engine_batches"] = session.take_batch_stats()
            serving["steps"].append(figures)
            metrics["backend"] = session.metrics()
            if result.aborted:
                raise ServerLost(f"{ctx.backend.name}: {result.aborted}", "check the server (its log, memory, whether it was stopped) and run again", metrics)
            return figures

        if opts.warmup_requests:
            ctx.status(f"warm-up: {opts.warmup_requests} requests, one at a time")
            warm = await run_step(session, requests_for(0)[: opts.warmup_requests], synchronous(), replace(opts.limits, max_requests=opts.warmup_requests))
            if warm.aborted:
                raise ServerLost(f"{ctx.backend.name}: {warm.aborted}", "check that the server is up and serving", metrics)
            serving["warmup"] = {"requests": len(warm.records), "finished": sum(r.ok for r in warm.records)}

        if opts.load == "server":
            await step(Load(opts.server.arrivals, rate=opts.server.rate))
        elif opts.load == "concurrency":
            await step(Load("concurrency", concurrency=opts.concurrency))
        sync_rate = saturation = None
        if opts.load == "sweep" or opts.search.enabled:
            sync_rate = (await step(synchronous()))["request_throughput"]
            saturation = (await step(throughput(opts.sweep.max_concurrency)))["request_throughput"]
            serving["saturation_rate"] = saturation
        if opts.load == "sweep":
            try:
                rates = sweep_rates(sync_rate or 0.0, saturation or 0.0, opts.sweep.steps)
            except ValueError as exc:  # nothing finished: the fixed-rate steps have no range to cover
                rates, serving["sweep_stopped"] = [], str(exc)
            for rate in rates:
                await step(Load(opts.sweep.arrivals, rate=rate))
            serving["max_valid_rate"] = max((s["offered_rate"] for s in serving["steps"] if s["verdict"] == "VALID"), default=None)
            serving.update(sweep_headline(serving["steps"]))
        if opts.search.enabled:
            serving["search"] = await self._search(step, sync_rate or 0.0, saturation or 0.0, slo)

        if len(serving["steps"]) == 1:  # one load level: its headline figures at the top
            only = serving["steps"][0]
            for key in ("request_throughput", "output_tokens_per_s", "goodput", "verdict", "reason"):
                serving[key] = only[key]

    async def _search(self, step: Any, sync_rate: float, saturation: float, slo: SLO) -> dict[str, Any]:
        if not slo.set:
            return {"max_rate_meeting_slo": None, "reason": "no SLO set (scenario.slo.ttft_ms, scenario.slo.tpot_ms)"}
        low = sync_rate if sync_rate > 0 else saturation / 10
        high = max(saturation, low) * 1.2
        if not 0 < low < high:
            return {"max_rate_meeting_slo": None, "reason": "no request finished in the synchronous and throughput steps"}

        async def meets(rate: float) -> tuple[bool, dict[str, Any]]:
            figures = await step(Load(self.options.sweep.arrivals, rate=rate, label=f"search@{rate:.4g}"))
            ttft, tpot = figures["ttft_ms"] or {}, figures["tpot_ms"] or {}
            return figures["verdict"] == "VALID", {"ttft_p99_ms": ttft.get("p99"), "tpot_p99_ms": tpot.get("p99")}

        return (await search_max_rate(meets, low, high, self.options.search.trials)).as_dict()

    def _figures(self, result: StepResult, slo: SLO) -> dict[str, Any]:
        figures = {**result.load.as_dict(), "offered_rate": result.load.rate}
        figures.update(step_figures(result.records, result.started, slo, self.options.keep_requests))
        if figures["offered_rate"] is None:  # closed loop: the rate it achieved is the rate it offered
            figures["offered_rate"] = figures["request_throughput"]
        figures["stopped_issuing"] = result.stopped_issuing
        figures["aborted"] = result.aborted
        return figures


def sweep_headline(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """A sweep's one-line figures: the best goodput of any step and ``k/n`` steps VALID (n: steps
    with a verdict; both None without an SLO)."""
    judged = [s for s in steps if s.get("verdict") is not None]
    goodputs = [s["goodput"] for s in steps if s.get("goodput") is not None]
    return {"peak_goodput": max(goodputs, default=None), "valid_steps": f"{sum(s['verdict'] == 'VALID' for s in judged)}/{len(judged)}" if judged else None}


def prompt_texts(ctx: RunContext) -> list[str]:
    """Eval texts prompts are cut from: the corpus's eval documents (``dataset=corpus``),
    else the eval split's texts of any text dataset."""
    if ctx.spec.dataset.kind == "corpus":
        from harness.generation import corpus

        return list(corpus.load_corpus(ctx.spec.dataset).eval)
    texts = list(ctx.load_data().eval.texts or [])
    if not texts:
        raise ConfigError(f"dataset '{ctx.spec.dataset.name}' has no texts to make prompts from", "use dataset=corpus (the default of +scenario=llm_serve)")
    return texts


class _ModelSources:
    """The run's decoder and tokenizer, built only when a backend or the workload asks."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self._source: Any = None
        self._tokenizer: Any = None

    def source(self) -> Any:
        """The :class:`DecoderSource` of the run's model (``model.checkpoint``/``path`` honoured)."""
        if self._source is None:
            from harness.generation import decoders
            from harness.generation.session import DecoderSource
            from harness.generation.tokenizer import corpus_tokenizer

            spec = self.ctx.spec
            if not decoders.is_decoder(spec.model.family):
                raise ConfigError(
                    f"model '{spec.model.name}' (family {spec.model.family}) is not a decoder LLM",
                    "use model=llama_tiny, llama_small, llama_1b or gpt2, or model.path=<causal-LM folder>",
                )
            model = self.ctx.load_model()
            tokenizer = model.tokenizer or corpus_tokenizer(self.ctx.cache_root)
            self._source = DecoderSource(
                model.name,
                model.module,
                model.config,
                tokenizer,
                model.params,
                model.weights_digest(),
                self.ctx.cache_root,
                self.ctx.status,
                workspace=self.ctx.workspace,
            )
        return self._source

    def tokenizer(self) -> Optional[Tokenizer]:
        """The tokenizer prompts are counted with: the decoder's own, without building it when possible."""
        if self._tokenizer is None:
            from harness.generation import decoders
            from harness.generation.tokenizer import corpus_tokenizer

            spec = self.ctx.spec
            if self._source is not None:
                self._tokenizer = PlainTokenizer(self._source.tokenizer)
            elif spec.model.path:
                self._tokenizer = load_tokenizer(spec.model.path)
            elif decoders.is_decoder(spec.model.family):
                self._tokenizer = PlainTokenizer(corpus_tokenizer(self.ctx.cache_root))
        return self._tokenizer

    def stages(self) -> dict[str, Any]:
        """Artifact stages the backend ran on the source (export, GGUF...), for the record."""
        return dict(self._source.stages) if self._source is not None else {}

    def described(self) -> dict[str, Any]:
        return {"params": self._source.params} if self._source is not None else {}


@hookimpl
def harness_register_scenarios(registry: Any) -> None:
    registry.add_scenario(ServingScenario)
