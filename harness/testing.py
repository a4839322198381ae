"""The backend conformance kit: a pytest plugin any backend package runs against itself.

A backend that passes the kit keeps the promises the scenarios rely on, so a vendor can
prove a plugin correct before publishing it. Two ways to run it:

* **one subclass per backend** in your own test suite (recommended; needs nothing but
  ``harness`` importable)::

      from harness.testing import BackendConformance

      class TestMyAccel(BackendConformance):
          backend = "myaccel"
          overrides = ("backend.device_id=0",)   # optional Hydra overrides

* **from the command line**, for any backend the plugin manager finds::

      pytest -p harness.testing --pyargs harness.testing --harness-backend=myaccel

  (``-p harness.testing`` is unnecessary once the ``pytest11`` entry point is installed.)

What is checked, each a test (``docs/plugins.md`` explains every rule):

* ``test_probe_answers_without_raising`` -- ``probe`` returns an :class:`Availability`,
  with a one-line reason when unavailable and devices when available;
* ``test_capabilities_are_well_formed`` -- known precisions, a consumable format, a
  tolerance for every precision;
* ``test_precision[...]`` -- for every known precision: a declared one gives outputs
  within the declared tolerance of eager fp32 on a tiny BERT (from the fp32 artifact, or
  from the artifact the backend's own recipe for that precision makes); an undeclared
  one is refused with :class:`~harness.errors.Unsupported`;
* ``test_image_model_matches_reference`` -- the same on a tiny ResNet (skipped when the
  backend answers ``Unsupported`` for it, or with ``image = False``);
* ``test_session_is_reusable_and_complete`` -- interleaved calls on two batches each
  give their own final outputs right after ``run``; the session's timer, the
  harness's measurement loop and ``run_many`` (offline load) work on it; ``memory`` and
  ``close`` behave;
* ``test_undeclared_recipe_is_unsupported`` -- ``compress`` refuses every recipe the
  backend does not list with :class:`~harness.errors.Unsupported`, never a silent fallback;
* ``test_training_is_declared_honestly`` -- a backend without ``training`` refuses
  ``prepare_training``; one with it lowers the loss of a batch in a few steps;
* ``test_real_model_shapes[...]`` -- opt-in (``--harness-real-models``,
  ``HARNESS_REAL_MODELS=1`` or ``real_models = True``): the real ``bert_small`` and
  ``resnet_small`` at their scenarios' batch and input shapes match eager fp32;
* ``test_full_run_writes_a_valid_record`` -- a whole ``+scenario=bert_fp32`` run through
  :func:`harness.runner.execute` gives a schema-valid record: ``ok`` when the backend is
  available, ``unavailable`` with the probe's reason when it is not.

The **generation tier** (:class:`GenerationConformance`, part of :class:`BackendConformance`
and usable alone by a plugin that only runs decoder LLMs, like llama.cpp's), on
``llama_tiny`` with untied random weights:

* ``test_generation_is_declared_honestly`` -- a backend without ``generation`` refuses
  ``prepare_generation`` with a one-line ``Unsupported``;
* ``test_generation_greedy_tokens_equal_eager_fp32`` -- a batched, left-padded greedy call
  gives exactly the tokens of an eager fp32 recompute without cache, and the session is
  reusable (a second call at another batch size gives them again);
* ``test_generation_timestamps_are_per_token`` -- one host timestamp per token, none before
  the request's start, never going backwards, so TTFT <= e2e;
* ``test_generation_score_matches_eager`` -- ``score`` (when implemented) has shape
  ``(batch, T - 1)`` and equals eager fp32 log-probabilities;
* ``test_generation_weight_only_is_realised_or_refused`` -- int4 weights either give a
  session whose artifact is smaller than fp32's and scores near eager, or a one-line
  ``Unsupported``;
* ``test_generation_run_writes_a_valid_record`` -- a whole ``+scenario=llm_fp32`` run:
  ``ok`` with every generation figure, ``unsupported`` without generation, or
  ``unavailable`` with the probe's reason.

A backend that is unavailable on this machine skips everything that needs it, with the
probe's own reason; its probe and its ``unavailable`` record are still checked.

Everything runs in-process on tiny models (seconds on a laptop CPU); the ONNX export is
cached in the usual artifact cache (``$HARNESS_CACHE`` or ``~/.cache/harness``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator, Sequence

import numpy as np
import pytest

__all__ = [
    "BackendConformance",
    "Case",
    "FAST_OVERRIDES",
    "GENERATION_OVERRIDES",
    "GenerationConformance",
    "KNOWN_PRECISIONS",
    "REAL_MODELS",
    "compose_overrides",
    "compose_spec",
    "decoder_source",
    "eager_greedy_no_cache",
    "every_recipe",
    "prepare_at",
    "run_spec",
    "training_plan",
]

#: Hydra overrides that make a full run take seconds: a 2-layer BERT with random weights
#: (no checkpoint to train), short sequences, a small dataset and a short measurement.
#: Put your own after them to change any.
FAST_OVERRIDES: tuple[str, ...] = (
    "model=bert_tiny",
    "++model.checkpoint=null",
    "scenario.batch_size=4",
    "scenario.seq_len=32",
    "scenario.warmup_iters=1",
    "scenario.min_iters=3",
    "scenario.min_duration_s=0",
    "scenario.max_duration_s=60",
    "dataset.train_size=64",
    "dataset.eval_size=64",
)

#: Hydra overrides of the generation tier's whole run: llama_tiny, short prompts and outputs,
#: a short measurement and small perplexity windows.
GENERATION_OVERRIDES: tuple[str, ...] = (
    "model=llama_tiny",
    "++model.checkpoint=null",
    "scenario.prompt_len=16",
    "scenario.new_tokens=8",
    "scenario.prompts=2",
    "scenario.warmup_iters=1",
    "scenario.min_iters=2",
    "scenario.min_duration_s=0",
    "scenario.max_duration_s=60",
    "scenario.accuracy.limit=2",
    "scenario.accuracy.window=32",
)
#: Prompts of the generation tier: two lengths, so a batched call left-pads one.
GENERATION_PROMPTS: tuple[tuple[int, ...], ...] = ((734, 361, 412, 262, 377, 257, 380, 359, 525, 262, 379, 257), (299, 41, 87, 120, 99, 101, 77, 55, 66))
GENERATION_NEW_TOKENS = 10
#: llama_tiny with untied embeddings: with tied ones a random tiny model echoes its last
#: token, which any engine reproduces; untied random weights give varied greedy tokens.
UNTIED = {"tie_word_embeddings": False}

#: A ResNet small enough to export and run in seconds (1-channel 32x32 digits).
TINY_RESNET = {
    "num_channels": 1,
    "embedding_size": 8,
    "hidden_sizes": [8, 16],
    "depths": [1, 1],
    "layer_type": "basic",
    "downsample_in_first_stage": False,
}


def _known_precisions() -> tuple[str, ...]:
    from harness.scenarios.inference import PRECISIONS

    return tuple(PRECISIONS)


#: Every precision a scenario can ask for; a backend declares a subset.
KNOWN_PRECISIONS: tuple[str, ...] = _known_precisions()


# --- the pytest plugin part -----------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harness", "harness backend conformance kit")
    group.addoption(
        "--harness-backend",
        action="append",
        default=[],
        metavar="NAME",
        help="run the conformance kit (pytest --pyargs harness.testing) against this backend; repeatable",
    )
    group.addoption(
        "--harness-real-models",
        action="store_true",
        default=False,
        help="also run the real-model tier: bert_small and resnet_small at their scenarios' real shapes (minutes on a CPU)",
    )
    group.addoption(
        "--harness-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Hydra override for every conformance run, e.g. backend.device=cuda; repeatable",
    )


# --- helpers a plugin's own tests may use as well --------------------------------------


def compose_spec(backend: str, overrides: Iterable[str] = (), plugins: Any = None, results_dir: str | Path | None = None) -> Any:
    """A validated :class:`harness.config.RunSpec` for ``+scenario=bert_fp32 backend=<backend>``.

    Composes the core's config tree plus every plugin's ``harness_config_searchpath``
    entries exactly like the ``harness`` command does, so a backend whose YAML is not
    shipped correctly fails here the same way it would for a user.
    """
    from harness.plugins import load_plugins

    plugins = plugins if plugins is not None else load_plugins()
    return compose_overrides(["+scenario=bert_fp32", f"backend={backend}", *FAST_OVERRIDES, *overrides], plugins, results_dir)


def compose_overrides(overrides: Iterable[str], plugins: Any, results_dir: str | Path | None = None) -> Any:
    """A validated :class:`harness.config.RunSpec` from command-line ``overrides``, composed
    over the core's config tree and ``plugins``' search path as the ``harness`` command does."""
    from harness.spec import build_spec

    from harness import compose

    args = list(overrides)
    if results_dir is not None:
        args.append(f"results_dir={results_dir}")
    searchpath = plugins.config_searchpath()
    with compose.hydra_context():
        cfg = compose.compose(args, searchpath)
    return build_spec(cfg, plugins.registry, recipes=lambda family: compose.recipe_for(family, searchpath))


def run_spec(spec: Any, plugins: Any = None) -> dict[str, Any]:
    """Run ``spec`` through :func:`harness.runner.execute` quietly and return the record."""
    from harness.plugins import load_plugins
    from harness.runner import execute

    return execute(spec, plugins if plugins is not None else load_plugins(), status=lambda _message: None)


@dataclass
class Case:
    """One model prepared for a backend: artifact, two distinct batches, eager references.

    ``data`` is the task the batches come from (calibration draws from its train split);
    ``source_key`` identifies the artifact for the compressed-artifact cache.
    """

    model: Any
    artifact: Any
    batches: tuple[dict[str, np.ndarray], dict[str, np.ndarray]]
    references: tuple[np.ndarray, np.ndarray]
    data: Any
    source_key: str
    family: str = "bert"
    output_name: str = field(init=False)

    def __post_init__(self) -> None:
        self.output_name = self.artifact.output_names[0]


def _one_line(text: str) -> bool:
    return bool(text.strip()) and "\n" not in text.strip()


def _outputs(session: Any, inputs: Any, name: str) -> np.ndarray:
    fetched = session.fetch(session.run(inputs))
    assert isinstance(fetched, dict), f"fetch must return a dict of numpy arrays, got {type(fetched).__name__}"
    assert name in fetched, f"fetch returned {sorted(fetched)}, not the output '{name}'"
    return np.asarray(fetched[name])


def _max_diff(got: np.ndarray, reference: np.ndarray) -> float:
    assert got.shape == reference.shape, f"output shape {got.shape} differs from the reference {reference.shape}"
    assert np.all(np.isfinite(got)), "outputs contain NaN or inf"
    return float(np.max(np.abs(got.astype(np.float64) - reference.astype(np.float64))))


def _unavailable_reason(name: str, availability: Any) -> str:
    return f"backend '{name}' is unavailable here: {availability.reason}"


def _case(ctx: Any, model: Any, data: Any, batch_size: int, family: str) -> Case:
    from harness.export import eager_outputs

    first, second = data.sample_batch(batch_size), data.sample_batch(batch_size, split="train")
    assert any(not np.array_equal(first[k], second[k]) for k in model.input_names), "the two test batches must differ"
    artifact, stage = ctx.artifact(model, data, first)
    source_key = stage["export"]["key"] if "export" in stage else model.weights_digest()
    references = (eager_outputs(model, first), eager_outputs(model, second))
    return Case(model, artifact, (first, second), references, data, source_key, family)


def _matches_eager_at_fp32(backend: Any, case: Case, label: str) -> None:
    """``case``'s two batches at fp32 within the backend's tolerance of eager; an image model
    the backend answers ``Unsupported`` for is skipped (text models must run)."""
    from harness.errors import Unsupported

    try:
        session = backend.prepare(case.artifact, "fp32")
    except Unsupported as exc:
        if case.family == "resnet":
            pytest.skip(f"image models: {exc.one_line()}")
        raise
    try:
        tolerance = backend.capabilities().tolerance["fp32"]
        for batch, reference in zip(case.batches, case.references):
            diff = _max_diff(_outputs(session, session.load(batch), case.output_name), reference)
            assert diff <= tolerance, f"{label} fp32 outputs differ from eager by {diff:.3g} (tolerance {tolerance})"
    finally:
        session.close()


def every_recipe() -> list[Any]:
    """One :class:`harness.compression.recipes.Recipe` per recipe name the harness can ask for."""
    from harness.compression.recipes import INT8_MODES, Recipe, conversion

    return [Recipe("int8", mode, calibration_samples=8) for mode in INT8_MODES if mode != "auto"] + [conversion("fp16"), conversion("bf16")]


def prepare_at(backend: Any, case: Case, precision: str, cache_root: str | None = None) -> Any:
    """A session at ``precision``, made the way the inference scenario makes it.

    When the scenario would compress first (int8 always; fp16/bf16 where the backend
    lists a conversion recipe), the artifact goes through the real compression stage
    (:func:`harness.compression.pipeline.compress`, cached) with a small calibration set;
    otherwise the fp32 artifact is prepared at ``precision`` directly.
    """
    from harness.compression.pipeline import compress
    from harness.compression.recipes import QuantizationOptions, recipe_for
    from harness.errors import Unsupported

    quantization = QuantizationOptions(calibration_samples=16, calibration_batch_size=4)
    recipe = recipe_for(precision, quantization, case.family, frozenset(backend.capabilities().recipes))
    artifact = case.artifact
    if recipe is not None:
        artifact, _ = compress(backend, artifact, recipe, case.data, case.source_key, cache_root, status=lambda _m: None, batch_size=4)
    try:
        return backend.prepare(artifact, precision)
    except Unsupported as refused:
        pytest.fail(
            f"{backend.name} declares precision '{precision}' but refuses it ({refused.one_line()}); "
            + (
                "its recipe " + recipe.name + " did not make an artifact it runs"
                if recipe is not None
                else "if it needs a converted artifact, list the conversion recipe in capabilities().recipes"
            ),
            pytrace=False,
        )


def decoder_source(cache_root: str | None = None, config: dict[str, Any] | None = None) -> Any:
    """``model=llama_tiny`` (its YAML, random init, ``config`` overriding fields) with the
    embedded tokenizer, as the :class:`~harness.generation.session.DecoderSource` a
    generation backend prepares."""
    from importlib import resources

    from omegaconf import OmegaConf

    from harness.generation.session import DecoderSource
    from harness.generation.tokenizer import corpus_tokenizer
    from harness.models import ModelOptions, load_model
    from harness.validation import typed

    yaml_text = (resources.files("harness.conf") / "model" / "llama_tiny.yaml").read_text()
    spec: dict[str, Any] = OmegaConf.to_container(OmegaConf.create(yaml_text))  # type: ignore[assignment]
    spec["config"] = {**spec["config"], **(config or {})}
    model = load_model(typed(ModelOptions, spec, "model"))
    return DecoderSource(
        model.name, model.module, model.config, corpus_tokenizer(cache_root), model.params, model.weights_digest(), cache_root, status=lambda _message: None
    )


def eager_greedy_no_cache(module: Any, prompt: Sequence[int], new_tokens: int) -> list[int]:
    """Greedy tokens by the simplest possible route: recompute the whole sequence in eager
    fp32 without a cache, take the arg-max, append, repeat (the ground truth of the tier)."""
    import torch

    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(new_tokens):
            ids.append(int(module(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1].argmax()))
    return ids[len(prompt) :]


def training_plan(model: Any, steps: int) -> Any:
    """A plain fp32 AdamW plan with a constant learning rate, for a few steps."""
    from harness.training.options import TrainingOptions
    from harness.training.plan import TrainingPlan

    options = TrainingOptions(lr=1e-3, schedule="constant", max_steps=steps, grad_clip=1.0, seed=0)
    return TrainingPlan.from_options(options, model.input_names, total_steps=steps)


# --- the kit ----------------------------------------------------------------------------


#: The real-model tier: each model at its own scenario's shapes (random weights: the shapes
#: and operators are what a compiler can fail on), with small data splits.
REAL_MODELS: dict[str, tuple[str, ...]] = {
    "bert_small": ("scenario=bert_fp32", "model=bert_small", "++model.checkpoint=null", "dataset.train_size=64", "dataset.eval_size=32"),
    "resnet_small": ("scenario=resnet_fp32", "++model.checkpoint=null", "dataset.train_size=64", "dataset.eval_size=32"),
}


class _OneBackend:
    """Parametrizes a kit class by its backend name; shared fixtures."""

    backend: ClassVar[str] = ""
    overrides: ClassVar[Sequence[str]] = ()

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "harness_backend_name" not in metafunc.fixturenames:
            return
        cls = metafunc.cls
        names = [cls.backend] if cls is not None and cls.backend else list(metafunc.config.getoption("harness_backend", default=None) or [])
        if names:
            metafunc.parametrize("harness_backend_name", names, scope="class", ids=names)
        else:
            skip = pytest.mark.skip(reason="no backend named: pass --harness-backend=<name> or subclass BackendConformance with backend = '<name>'")
            metafunc.parametrize("harness_backend_name", [pytest.param("", marks=skip)], scope="class", ids=["no-backend"])

    @pytest.fixture(scope="class")
    @classmethod
    def harness_plugins(cls) -> Any:
        from harness.plugins import load_plugins

        return load_plugins()

    @pytest.fixture(scope="class")
    @classmethod
    def harness_results_dir(cls, tmp_path_factory: pytest.TempPathFactory) -> Path:
        return tmp_path_factory.mktemp("harness-conformance-results")

    @classmethod
    def _overrides(cls, request: pytest.FixtureRequest) -> list[str]:
        return [*cls.overrides, *(request.config.getoption("harness_override", default=None) or [])]

    @staticmethod
    def _registered(name: str, plugins: Any) -> None:
        if name not in plugins.registry.backends:
            problems = "; ".join(p.warning() for p in plugins.problems) or "no plugin problems reported"
            pytest.fail(
                f"backend '{name}' is not registered (registered: {', '.join(sorted(plugins.registry.backends))}; {problems}). "
                "Install the plugin package (its 'harness' entry point) or name its module in HARNESS_PLUGINS.",
                pytrace=False,
            )

    @staticmethod
    def _probe(spec: Any, plugins: Any) -> Any:
        """``probe``'s answer, or the exception it raised (reported by the probe test)."""
        try:
            return plugins.registry.backend(spec.backend_name).probe(spec.backend_options)
        except Exception as exc:  # the probe test fails on this; the others skip
            return exc

    @staticmethod
    def _instance(spec: Any, plugins: Any, probe: Any) -> Any:
        """A backend instance built from the spec's typed options; skips when unavailable."""
        if isinstance(probe, Exception):
            pytest.skip(f"probe raised {type(probe).__name__}: {probe} (see test_probe_answers_without_raising)")
        if not probe.available:
            pytest.skip(_unavailable_reason(spec.backend_name, probe))
        return plugins.registry.backend(spec.backend_name)(spec.backend_options)


class GenerationConformance(_OneBackend):
    """The generation tier alone: subclass with ``backend = "<name>"`` (and ``overrides``)
    for a plugin that runs decoder LLMs only; :class:`BackendConformance` includes it."""

    @pytest.fixture(scope="class")
    @classmethod
    def harness_generation_spec(cls, request: pytest.FixtureRequest, harness_backend_name: str, harness_plugins: Any, harness_results_dir: Path) -> Any:
        """``+scenario=llm_fp32`` on llama_tiny for this backend, composed like the CLI."""
        cls._registered(harness_backend_name, harness_plugins)
        return compose_overrides(
            ["+scenario=llm_fp32", f"backend={harness_backend_name}", *GENERATION_OVERRIDES, *cls._overrides(request)], harness_plugins, harness_results_dir
        )

    @pytest.fixture(scope="class")
    @classmethod
    def harness_generation_probe(cls, harness_generation_spec: Any, harness_plugins: Any) -> Any:
        return cls._probe(harness_generation_spec, harness_plugins)

    @pytest.fixture(scope="class")
    @classmethod
    def harness_generation_backend(cls, harness_generation_spec: Any, harness_plugins: Any, harness_generation_probe: Any) -> Any:
        return cls._instance(harness_generation_spec, harness_plugins, harness_generation_probe)

    @pytest.fixture(scope="class")
    @classmethod
    def harness_decoder(cls, harness_generation_spec: Any) -> tuple[Any, list[list[int]]]:
        """The untied llama_tiny source and the eager no-cache greedy tokens of each prompt."""
        source = decoder_source(harness_generation_spec.cache_dir, UNTIED)
        return source, [eager_greedy_no_cache(source.module, p, GENERATION_NEW_TOKENS) for p in GENERATION_PROMPTS]

    @staticmethod
    def _session(backend: Any, source: Any, batch: int = 2, weights: Any = None, precision: str = "fp32") -> Any:
        from harness.generation.session import GenerationPlan

        if not backend.capabilities().generation:
            pytest.skip(f"{backend.name} does not declare generation (test_generation_is_declared_honestly checks its refusal)")
        return backend.prepare_generation(source, GenerationPlan(precision, batch, 12, GENERATION_NEW_TOKENS, weights))

    def test_generation_is_declared_honestly(self, harness_generation_backend: Any, harness_decoder: Any) -> None:
        from harness.errors import Unsupported
        from harness.generation.session import GenerationPlan

        backend = harness_generation_backend
        assert isinstance(backend.capabilities().generation, bool)
        if backend.capabilities().generation:
            backend.check_generation()
            return
        with pytest.raises(Unsupported) as refused:
            backend.prepare_generation(harness_decoder[0], GenerationPlan("fp32", 1, 12, GENERATION_NEW_TOKENS))
        assert _one_line(refused.value.one_line())

    def test_generation_greedy_tokens_equal_eager_fp32(self, harness_generation_backend: Any, harness_decoder: Any) -> None:
        source, expected = harness_decoder
        session = self._session(harness_generation_backend, source)
        try:
            got = session.generate([list(p) for p in GENERATION_PROMPTS], GENERATION_NEW_TOKENS)
            assert [o.tokens for o in got] == expected, "batched, left-padded greedy tokens differ from eager fp32 without cache"
            for _ in range(2):  # reusable: every call starts afresh, at another batch size too
                again = session.generate([list(GENERATION_PROMPTS[0])], GENERATION_NEW_TOKENS)
                assert [o.tokens for o in again] == expected[:1], "a later call at batch 1 gives other tokens"
        finally:
            session.close()
        session.close()  # closing twice is harmless

    def test_generation_timestamps_are_per_token(self, harness_generation_backend: Any, harness_decoder: Any) -> None:
        from harness.generation.session import check_outputs, now

        session = self._session(harness_generation_backend, harness_decoder[0])
        try:
            before = now()
            outputs = session.generate([list(p) for p in GENERATION_PROMPTS], GENERATION_NEW_TOKENS)
            after = now()
            check_outputs(outputs, len(GENERATION_PROMPTS), harness_generation_backend.name)
            for output, prompt in zip(outputs, GENERATION_PROMPTS):
                times = output.token_times
                assert len(output.tokens) == len(times) == GENERATION_NEW_TOKENS, "one timestamp per token, exactly new_tokens tokens"
                assert output.prompt_tokens == len(prompt)
                assert before <= output.start <= times[0] and times[-1] <= after, "timestamps outside the call (another clock?)"
                assert all(b >= a for a, b in zip(times, times[1:])), "timestamps go backwards"
                assert times[0] - output.start <= times[-1] - output.start, "TTFT above e2e"
            assert isinstance(session.metrics(), dict) and isinstance(session.memory(), dict)
        finally:
            session.close()

    def test_generation_score_matches_eager(self, harness_generation_backend: Any, harness_decoder: Any) -> None:
        from harness.errors import Unsupported
        from harness.generation.quality import eager_logprobs

        source = harness_decoder[0]
        windows = np.asarray([p[:9] for p in GENERATION_PROMPTS], dtype=np.int64)
        session = self._session(harness_generation_backend, source)
        try:
            try:
                got = np.asarray(session.score(windows))
            except Unsupported as refused:
                assert _one_line(refused.value.one_line() if hasattr(refused, "value") else refused.one_line())
                pytest.skip(f"score() is not implemented: {refused.one_line()}")
            assert got.shape == (2, 8), f"score gave shape {got.shape}, not (batch, T - 1) = (2, 8)"
            assert np.all(np.isfinite(got)) and np.all(got <= 0), "log-probabilities must be finite and <= 0"
            diff = float(np.max(np.abs(got - eager_logprobs(source.module, windows))))
            assert diff < 1e-2, f"fp32 log-probabilities differ from eager by {diff:.3g}"
        finally:
            session.close()

    def test_generation_weight_only_is_realised_or_refused(self, harness_generation_backend: Any, harness_decoder: Any) -> None:
        from harness.compression.recipes import WeightRecipe
        from harness.errors import Unsupported
        from harness.generation.quality import eager_logprobs

        source = harness_decoder[0]
        try:
            session = self._session(harness_generation_backend, source, 1, WeightRecipe("int4"), "int4")
        except Unsupported as refused:
            assert _one_line(refused.one_line())
            return
        try:
            stage = source.stages.get("compression") or {}
            assert stage.get("size_bytes") and stage.get("fp32_size_bytes"), (
                "a weight-only session must record source.stages['compression'] with size_bytes and fp32_size_bytes"
            )
            assert stage["size_bytes"] < stage["fp32_size_bytes"], "the int4 artifact is not smaller than fp32"
            outputs = session.generate([list(GENERATION_PROMPTS[0])], GENERATION_NEW_TOKENS)
            assert len(outputs[0].tokens) == GENERATION_NEW_TOKENS
            windows = np.asarray([p[:9] for p in GENERATION_PROMPTS], dtype=np.int64)
            try:
                got = np.asarray(session.score(windows))
            except Unsupported:
                return
            diff = float(np.max(np.abs(got - eager_logprobs(source.module, windows))))
            assert 0 < diff < 1.0, f"int4 log-probabilities differ from eager fp32 by {diff:.3g} (0: not compressed?)"
        finally:
            session.close()

    def test_generation_run_writes_a_valid_record(self, harness_generation_spec: Any, harness_plugins: Any, harness_generation_probe: Any) -> None:
        from harness import records

        record = run_spec(harness_generation_spec, harness_plugins)
        records.validate(record)
        probe = harness_generation_probe
        if isinstance(probe, Exception) or not probe.available:
            assert record["status"] in ("unavailable", "failed") and _one_line(record["reason"])
            return
        backend = harness_plugins.registry.backend(harness_generation_spec.backend_name)(harness_generation_spec.backend_options)
        if not backend.capabilities().generation:
            assert record["status"] == "unsupported" and _one_line(record["reason"]), record["reason"]
            return
        assert record["status"] == "ok", f"{record['status']}: {record['reason']}"
        generation = record["metrics"]["generation"]
        for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
            assert generation[key]["count"] > 0 and generation[key]["p50"] > 0, key
        assert generation["ttft_ms"]["p50"] <= generation["e2e_ms"]["p50"]
        assert generation["decode_tokens_per_s"] > 0 and generation["output_tokens"] == generation["requests"] * 8
        accuracy = record["metrics"]["accuracy"]
        assert accuracy["metric"] == "perplexity" and accuracy["agreement"] is not None


class BackendConformance(GenerationConformance):
    """Subclass with ``backend = "<name>"`` to run every conformance check on that backend.

    Class attributes:

    * ``backend`` -- the registered backend name (empty: take ``--harness-backend``);
    * ``overrides`` -- extra Hydra overrides for this backend (``backend.device=cuda``);
    * ``image`` -- also check a tiny ResNet (skipped when the backend says Unsupported);
    * ``real_models`` -- also run the real-model tier (:data:`REAL_MODELS`).

    ``--harness-override KEY=VALUE`` on the command line adds overrides to every class.
    The generation tier (:class:`GenerationConformance`) runs too: a backend that does not
    declare generation is only checked to refuse it.
    """

    image: ClassVar[bool] = True
    #: Opt into the real-model tier (bert_small, resnet_small at real shapes) for this class.
    real_models: ClassVar[bool] = False

    # -- fixtures (class scope: one probe, one export per backend) --
    @pytest.fixture(scope="class")
    @classmethod
    def harness_spec(cls, request: pytest.FixtureRequest, harness_backend_name: str, harness_plugins: Any, harness_results_dir: Path) -> Any:
        """The validated RunSpec for this backend (composed like the CLI, plugin YAML included)."""
        cls._registered(harness_backend_name, harness_plugins)
        return compose_spec(harness_backend_name, cls._overrides(request), harness_plugins, harness_results_dir)

    @pytest.fixture(scope="class")
    @classmethod
    def harness_probe(cls, harness_spec: Any, harness_plugins: Any) -> Any:
        """``probe``'s answer, or the exception it raised (reported by the probe test)."""
        return cls._probe(harness_spec, harness_plugins)

    @pytest.fixture(scope="class")
    @classmethod
    def harness_backend(cls, harness_spec: Any, harness_plugins: Any, harness_probe: Any) -> Any:
        """A backend instance built from the spec's typed options; skips when unavailable."""
        return cls._instance(harness_spec, harness_plugins, harness_probe)

    @pytest.fixture(scope="class")
    @classmethod
    def harness_context(cls, harness_spec: Any, harness_backend: Any) -> Iterator[Any]:
        from harness.scenario import RunContext

        context = RunContext(spec=harness_spec, backend=harness_backend, status=lambda _message: None)
        yield context
        context.close()

    @pytest.fixture(scope="class")
    @classmethod
    def harness_text_case(cls, harness_spec: Any, harness_context: Any) -> Case:
        """The tiny BERT of the spec, its artifact for this backend, two batches and references."""
        opts = harness_spec.scenario_options
        model = harness_context.load_model()
        data = harness_context.load_data(opts.seq_len, model.tokenizer)
        return _case(harness_context, model, data, opts.batch_size, harness_spec.model.family)

    @pytest.fixture(scope="class")
    @classmethod
    def harness_image_case(cls, harness_context: Any) -> Case:
        """A tiny ResNet on digits images, like the text case."""
        if not cls.image:
            pytest.skip("image checks are off for this backend (image = False)")
        from harness.data import DatasetOptions, load_dataset
        from harness.models import ModelOptions, load_model

        model = load_model(ModelOptions(name="resnet_conformance", family="resnet", num_labels=10, config=dict(TINY_RESNET)))
        data = load_dataset(DatasetOptions(name="digits", kind="digits", train_size=16, eval_size=16, image_size=32))
        return _case(harness_context, model, data, 4, "resnet")

    # -- probe and declarations ------------------------------------------------------

    def test_probe_answers_without_raising(self, harness_spec: Any, harness_probe: Any, harness_plugins: Any) -> None:
        from harness.backend import Availability

        name = harness_spec.backend_name
        assert not isinstance(harness_probe, Exception), (
            f"probe raised {type(harness_probe).__name__}: {harness_probe}; a missing library or device must be Availability(False, reason), never an exception"
        )
        assert isinstance(harness_probe, Availability), f"probe returned {type(harness_probe).__name__}, not Availability"
        assert isinstance(harness_probe.available, bool)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in dict(harness_probe.versions).items()), "versions must map str to str"
        assert all(isinstance(d, str) and d for d in harness_probe.devices), "devices must be non-empty strings"
        if harness_probe.available:
            assert harness_probe.devices, f"{name} is available but names no device"
            assert harness_probe.versions.get(name), f"{name} is available but its probe gives no versions['{name}']: that is the version every record carries"
        else:
            assert _one_line(harness_probe.reason), f"{name} is unavailable without a one-line reason: {harness_probe.reason!r}"
        again = harness_plugins.registry.backend(name).probe(harness_spec.backend_options)
        assert again.available == harness_probe.available, "two probes in a row disagree"

    def test_capabilities_are_well_formed(self, harness_backend: Any) -> None:
        from harness.backend import Capabilities

        caps = harness_backend.capabilities()
        assert isinstance(caps, Capabilities), f"capabilities() returned {type(caps).__name__}, not Capabilities"
        precisions = set(caps.precisions)
        assert precisions, "no precision declared"
        assert precisions <= set(KNOWN_PRECISIONS), f"unknown precision(s) {sorted(precisions - set(KNOWN_PRECISIONS))}; known: {KNOWN_PRECISIONS}"
        assert caps.consumes and all(isinstance(f, str) and f for f in caps.consumes), "consumes must list formats"
        assert {"onnx", "torch"} & set(caps.consumes), (
            f"consumes {caps.consumes}: the harness produces 'onnx' or 'torch' artifacts; build your own IR from one of them in prepare"
        )
        for precision in precisions:
            tolerance = caps.tolerance.get(precision)
            assert isinstance(tolerance, (int, float)) and math.isfinite(tolerance) and tolerance > 0, (
                f"tolerance for '{precision}' must be a positive number, got {tolerance!r}"
            )
        assert isinstance(caps.training, bool)
        known = {recipe.name for recipe in every_recipe()}
        assert set(caps.recipes) <= known, f"unknown recipe name(s) {sorted(set(caps.recipes) - known)}; the harness asks for: {sorted(known)}"
        assert isinstance(harness_backend.device(), str) and harness_backend.device()
        assert isinstance(harness_backend.device_info(), dict)
        for column in type(harness_backend).report_columns:
            assert column.key.startswith("metrics.backend."), f"backend column {column.key} must read metrics.backend.*"

    # -- outputs ---------------------------------------------------------------------

    @pytest.mark.parametrize("precision", KNOWN_PRECISIONS)
    def test_precision(self, precision: str, harness_spec: Any, harness_backend: Any, harness_text_case: Any) -> None:
        from harness.errors import Unsupported

        caps = harness_backend.capabilities()
        if precision not in caps.precisions:
            with pytest.raises(Unsupported):
                harness_backend.check_precision(precision)
            with pytest.raises(Unsupported) as refused:
                harness_backend.prepare(harness_text_case.artifact, precision)
            assert _one_line(refused.value.one_line())
            return
        session = prepare_at(harness_backend, harness_text_case, precision, harness_spec.cache_dir)
        try:
            for batch, reference in zip(harness_text_case.batches, harness_text_case.references):
                diff = _max_diff(_outputs(session, session.load(batch), harness_text_case.output_name), reference)
                assert diff <= caps.tolerance[precision], (
                    f"{precision} outputs differ from eager fp32 by {diff:.3g}, beyond the declared tolerance {caps.tolerance[precision]}"
                )
        finally:
            session.close()

    def test_image_model_matches_reference(self, harness_backend: Any, harness_image_case: Any) -> None:
        _matches_eager_at_fp32(harness_backend, harness_image_case, "ResNet")

    # -- real models (opt-in) -----------------------------------------------------------

    @pytest.mark.parametrize("model_name", sorted(REAL_MODELS))
    def test_real_model_shapes(self, model_name: str, request: pytest.FixtureRequest, harness_backend: Any, harness_plugins: Any, harness_spec: Any) -> None:
        """The real ``bert_small`` / ``resnet_small`` at their scenario's batch and input shape,
        prepared at fp32 and checked against eager: a tiny model can pass where a real shape
        fails to compile. Opt-in (``real_models = True``, ``--harness-real-models`` or
        ``HARNESS_REAL_MODELS=1``): it takes minutes on a CPU."""
        import os

        from harness.scenario import RunContext

        wanted = self.real_models or os.environ.get("HARNESS_REAL_MODELS", "") not in ("", "0")
        try:
            wanted = wanted or bool(request.config.getoption("--harness-real-models"))
        except ValueError:  # the kit's pytest options are not registered in this session
            pass
        if not wanted:
            pytest.skip("real-model tier is opt-in: --harness-real-models, HARNESS_REAL_MODELS=1 or real_models = True")
        overrides = [
            *REAL_MODELS[model_name],
            f"backend={harness_spec.backend_name}",
            *self.overrides,
            *(request.config.getoption("--harness-override", default=[]) or []),
        ]
        spec = compose_overrides(overrides, harness_plugins)
        context = RunContext(spec=spec, backend=harness_backend, status=lambda _message: None)
        try:
            model = context.load_model()
            opts = spec.scenario_options
            data = context.load_data(opts.seq_len, model.tokenizer)
            case = _case(context, model, data, opts.batch_size, spec.model.family)
            _matches_eager_at_fp32(harness_backend, case, model_name)
        finally:
            context.close()

    # -- sessions ---------------------------------------------------------------------

    def test_session_is_reusable_and_complete(self, harness_backend: Any, harness_text_case: Any) -> None:
        from harness.measure import MeasurePlan, measure

        case = harness_text_case
        tolerance = harness_backend.capabilities().tolerance.get("fp32", 1e-3)
        session = harness_backend.prepare(case.artifact, "fp32")
        try:
            inputs = [session.load(b) for b in case.batches]
            # Interleaved calls, each fetched right after run: a backend that returns before
            # the device is done, or hands back a buffer the next call overwrites before
            # fetch, gives the other batch's (or stale) values here.
            seen: list[np.ndarray] = []
            for index in (0, 1, 0, 1, 0):
                got = _outputs(session, inputs[index], case.output_name)
                diff = _max_diff(got, case.references[index])
                assert diff <= tolerance, f"call on batch {index} differs from its reference by {diff:.3g} (tolerance {tolerance})"
                if index == 0:
                    seen.append(got.copy())
            for later in seen[1:]:
                assert _max_diff(later, seen[0]) <= tolerance, "repeated calls on the same batch disagree"

            result, seconds = session.timer.time(session.run, inputs[1])
            assert isinstance(seconds, float) and math.isfinite(seconds) and seconds > 0, f"timer returned {seconds!r} s"
            diff = _max_diff(np.asarray(session.fetch(result)[case.output_name]), case.references[1])
            assert diff <= tolerance, "the result is not complete when the session's timer stops"

            measurement = measure(session, inputs[0], MeasurePlan(warmup_iters=1, min_iters=3, min_duration_s=0.0, max_duration_s=60.0))
            assert len(measurement.samples_ms) >= 3 and all(s > 0 and math.isfinite(s) for s in measurement.samples_ms)

            # Offline load: every call counted must be complete when run_many returns.
            calls, seconds = session.run_many(inputs[1], 3, 0.0)
            assert isinstance(calls, int) and calls >= 3, f"run_many completed {calls!r} calls, asked for at least 3"
            assert math.isfinite(seconds) and seconds > 0, f"run_many took {seconds!r} s"
            diff = _max_diff(_outputs(session, inputs[0], case.output_name), case.references[0])
            assert diff <= tolerance, "a call after run_many differs from its reference (state left behind?)"

            memory = session.memory()
            assert isinstance(memory, dict) and all(isinstance(k, str) and isinstance(v, (int, float)) and v >= 0 for k, v in memory.items()), (
                f"memory() must map names to MiB figures, got {memory!r}"
            )
            assert isinstance(session.device, str) and session.device
        finally:
            session.close()
        session.close()  # closing twice is harmless
        second = harness_backend.prepare(case.artifact, "fp32")
        try:
            diff = _max_diff(_outputs(second, second.load(case.batches[0]), case.output_name), case.references[0])
            assert diff <= tolerance, "a second session from the same backend differs"
        finally:
            second.close()

    # -- refusals ---------------------------------------------------------------------

    def test_undeclared_recipe_is_unsupported(self, harness_backend: Any, harness_text_case: Any, tmp_path: Path) -> None:
        from harness.compression.calibration import calibration_set
        from harness.errors import Unsupported

        listed = harness_backend.capabilities().recipes
        unlisted = [recipe for recipe in every_recipe() if recipe.name not in listed]
        if not unlisted:
            pytest.skip("the backend lists every recipe the harness defines")
        for recipe in unlisted:
            calibration = calibration_set(harness_text_case.data, 8, tmp_path / recipe.name, batch_size=4)
            with pytest.raises(Unsupported) as refused:
                harness_backend.compress(harness_text_case.artifact, recipe, calibration)
            assert _one_line(refused.value.one_line()), recipe.name

    def test_training_is_declared_honestly(self, harness_backend: Any, harness_text_case: Any) -> None:
        import copy

        from harness.errors import Unsupported

        case = harness_text_case
        steps = 8
        plan = training_plan(case.model, steps)
        if not harness_backend.capabilities().training:
            with pytest.raises(Unsupported) as refused:
                harness_backend.prepare_training(copy.deepcopy(case.model.module), plan)
            assert _one_line(refused.value.one_line())
            return
        batch = next(case.data.batches("train", 4))
        session = harness_backend.prepare_training(copy.deepcopy(case.model.module), plan)
        inputs = session.load(batch)
        losses = [session.train_step(inputs) for _ in range(steps - 1)]
        _, seconds = session.timer.time(session.train_step, inputs)
        assert all(isinstance(loss, float) and math.isfinite(loss) for loss in losses), f"train_step losses: {losses}"
        assert math.isfinite(seconds) and seconds > 0
        assert losses[-1] < losses[0], f"{steps} steps on one batch did not lower the loss: {losses}"
        logits = np.asarray(session.predict(inputs))
        assert logits.shape == (len(batch["labels"]), case.references[0].shape[1]), f"predict gave shape {logits.shape}"
        assert isinstance(session.memory(), dict)

    # -- the whole path -------------------------------------------------------------------

    def test_full_run_writes_a_valid_record(self, harness_spec: Any, harness_plugins: Any, harness_probe: Any, harness_results_dir: Path) -> None:
        from harness import records

        record = run_spec(harness_spec, harness_plugins)
        records.validate(record)
        path = records.write(record, harness_results_dir)
        assert records.read(path)["run_id"] == record["run_id"]
        name = harness_spec.backend_name
        assert record["backend"]["name"] == name
        origin = harness_plugins.registry.plugin_of("backends", name)
        assert record["backend"]["plugin"] and record["backend"]["plugin"]["name"] == origin.name, "the record must name the plugin"
        if isinstance(harness_probe, Exception):
            assert record["status"] in ("failed", "unavailable") and _one_line(record["reason"])
            return
        if not harness_probe.available:
            assert record["status"] == "unavailable", f"unavailable backend recorded as {record['status']}: {record['reason']}"
            assert " ".join(harness_probe.reason.split()) in record["reason"], "the record must carry the probe's reason"
            assert _one_line(record["reason"])
            return
        assert record["status"] == "ok", f"{record['status']}: {record['reason']}"
        validation = record["metrics"]["validation"]
        assert validation["max_abs_diff"] <= validation["tolerance"]
        assert record["metrics"]["latency_ms"]["count"] >= 3


class TestBackendConformance(BackendConformance):
    """What ``pytest --pyargs harness.testing --harness-backend=<name>`` collects."""
