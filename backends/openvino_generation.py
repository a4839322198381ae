"""Text generation on the ``openvino`` backend: a stateful IR through openvino-genai.

Why this path: OpenVINO deploys LLMs as *stateful* models (the KV cache lives inside
the compiled model as variables, never crossing the API) run by openvino-genai's
``LLMPipeline``, which is what ``optimum-cli export openvino`` + ``LLMPipeline``
produce. optimum-intel does not install beside transformers 5.x, so the harness builds
the same IR itself from its own validated ONNX export (the canonical route): OpenVINO
reads the decoder-with-past ONNX, a ``beam_idx`` input gathers the cache rows (the
input LLMPipeline drives, as optimum-intel's ``fuse_cache_reorder`` adds), and
``apply_make_stateful_transformation`` turns each ``past``/``present`` pair into one
state variable. The tokenizer becomes ``openvino_tokenizer.xml``/``openvino_detokenizer.xml``
with ``openvino_tokenizers.convert_tokenizer``; config and generation config are
written beside them, so the folder is a complete openvino-genai model folder.

Engines (``backend.generation_engine``):

* ``genai`` -- ``LLMPipeline.generate`` on token ids with a streamer whose callback
  timestamps each token as it reaches Python. Its own ``PerfMetrics`` (TTFT, TPOT,
  throughput) are averaged into ``metrics.backend`` to cross-check the harness's
  figures. LLMPipeline streams only one prompt per call.
* ``stateful`` -- the same IR compiled once and driven with an ``InferRequest``
  (``reset_state`` per batch) inside the shared token loop, as optimum-intel's
  ``OVModelForCausalLM`` does: any batch size, every token timestamped.
* ``auto`` (default) -- ``genai`` when calls carry one prompt, ``stateful`` otherwise.

Perplexity always uses the stateful request (LLMPipeline returns no logits).
Precision: ``INFERENCE_PRECISION_HINT`` and ``KV_CACHE_PRECISION`` both follow the
scenario (f32 for fp32; the CPU plugin's default KV cache is u8, which would make an
"fp32" run a quantized-cache one).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from harness import cache
from harness.compression.recipes import WeightRecipe
from harness.errors import HarnessError, Unavailable, Unsupported, exception_line
from harness.generation.decoders import kv_layout
from harness.generation.loop import next_token_logprobs, positions, run_loop
from harness.generation.onnx_export import io_names
from harness.generation.session import GREEDY, Decoding, GenerationOutput, GenerationPlan, GenerationSession, now

ENGINES = ("auto", "genai", "stateful")
#: OpenVINO precision names for the compute and the KV cache.
PRECISION = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
MARKER = "harness_ir.json"


def make_stateful(model: Any, layers: int) -> None:
    """Add ``beam_idx`` (cache-row gather) and fold every past/present pair into a state variable."""
    import openvino as ov
    import openvino.opset13 as ops
    from openvino._offline_transformations import apply_make_stateful_transformation

    inputs, outputs = io_names(layers)
    batch = model.input("input_ids").get_partial_shape()[0]
    beam_idx = ops.parameter(name="beam_idx", dtype=ov.Type.i32, shape=ov.PartialShape([batch]))
    beam_idx.output(0).get_tensor().add_names({"beam_idx"})
    model.add_parameters([beam_idx])
    for name in inputs[3:]:
        port = model.input(name)
        consumers = port.get_target_inputs()
        gather = ops.gather(port, beam_idx, ops.constant(0))
        for consumer in consumers:
            consumer.replace_source_output(gather.output(0))
    model.validate_nodes_and_infer_types()
    apply_make_stateful_transformation(model, dict(zip(inputs[3:], outputs[1:])))


def genai_folder(source: Any, core: Any) -> Path:
    """The openvino-genai model folder for ``source`` (built once from its ONNX export, cached)."""
    import openvino as ov

    onnx_path = source.onnx()
    key = cache.content_key("openvino-genai-folder/1", source.stages["export"]["key"], ov.__version__, _version("openvino-tokenizers"))

    def stateful_ir() -> Any:
        model = core.read_model(str(onnx_path))
        make_stateful(model, kv_layout(source.config).layers)
        return model

    return cached_genai_folder(
        source, "openvino_llm", key, stateful_ir, "openvino_ir", f"converting {source.name} to a stateful OpenVINO IR with its tokenizer"
    )


def cached_genai_folder(source: Any, kind: str, key: str, build: Callable[[], Any], stage: str, doing: str, **facts: Any) -> Path:
    """An openvino-genai model folder (the IR ``build()`` returns, tokenizer IRs, configs) under
    ``<cache>/<kind>/<key>``: built once in a staging folder and renamed into place, so a crash
    never leaves half a folder behind; its build time and size go to ``source.stages[stage]``."""
    import openvino as ov

    started = time.perf_counter()
    final = cache.cache_dir(source.cache_root) / kind / key
    cached = (final / MARKER).is_file()
    if not cached:
        source.status(f"{doing} (cached under {final})")
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = final.parent / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
        try:
            ov.save_model(build(), str(staging / "openvino_model.xml"), compress_to_fp16=False)
            tokenizer = _tokenizer_ir(source.tokenizer, staging)
            source.module.config.to_json_file(str(staging / "config.json"))
            source.module.generation_config.to_json_file(str(staging / "generation_config.json"))
            (staging / MARKER).write_text(json.dumps({"key": key, "tokenizer": tokenizer}))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    meta = json.loads((final / MARKER).read_text())
    size = sum((final / name).stat().st_size for name in MODEL_FILES)
    source.stages[stage] = {
        "seconds": round(time.perf_counter() - started, 3),
        "cached": cached,
        "size_bytes": size,
        "tokenizer": meta["tokenizer"],
        "key": key,
        **facts,
    }
    return final


#: The IR files of a genai model folder (the rest: tokenizer IRs and configs).
MODEL_FILES = ("openvino_model.xml", "openvino_model.bin")


def weight_compressed_folder(backend: Any, source: Any, recipe: WeightRecipe) -> Path:
    """A genai model folder whose IR has NNCF weight-only int8/int4 weights
    (:func:`harness.compression.nncf_quant.compress_decoder_weights`), built from the
    fp32 stateful IR once per recipe in the compressed-artifact cache."""
    import nncf
    import openvino as ov

    from harness.compression import nncf_quant
    from harness.compression.pipeline import compress_decoder

    fp32 = genai_folder(source, backend.core)
    ir = source.stages["openvino_ir"]

    def build(work: Path) -> dict[str, Any]:
        for path in fp32.iterdir():
            if path.is_file() and path.name not in MODEL_FILES and not cache.is_stamp(path):
                shutil.copy2(path, work / path.name)
        model = backend.core.read_model(str(fp32 / "openvino_model.xml"))
        compressed, details = nncf_quant.compress_decoder_weights(model, recipe)
        ov.save_model(compressed, str(work / "openvino_model.xml"), compress_to_fp16=False)
        return details

    folder, stage = compress_decoder(
        backend, recipe, ir["key"], {"openvino": ov.__version__, "nncf": nncf.__version__}, build, source.cache_root, source.status
    )
    stage["size_bytes"] = sum((folder / name).stat().st_size for name in MODEL_FILES)  # the IR alone, as fp32's
    source.stages["compression"] = {**stage, "fp32_size_bytes": ir["size_bytes"], "fp32_artifact": "the fp32 stateful IR"}
    return folder


def _tokenizer_ir(tokenizer: Any, folder: Path) -> str:
    """Write the tokenizer/detokenizer IRs; returns "converted" or why not (the pipeline then takes ids only)."""
    import openvino as ov

    try:
        from openvino_tokenizers import convert_tokenizer

        tok, detok = convert_tokenizer(tokenizer, with_detokenizer=True)
    except Exception as exc:  # an unsupported tokenizer type: generation on token ids still works
        return f"not converted: {exception_line(exc, 200)}"
    ov.save_model(tok, str(folder / "openvino_tokenizer.xml"))
    ov.save_model(detok, str(folder / "openvino_detokenizer.xml"))
    return "converted"


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "missing"


class StatefulStepper:
    """One ``InferRequest`` on the stateful model: the cache lives in its state variables."""

    def __init__(self, compiled: Any) -> None:
        self.request = compiled.create_infer_request()

    def _infer(self, ids: np.ndarray, mask: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """The logits of one infer call (shared inputs: no copy into the request's tensors)."""
        beam = np.arange(ids.shape[0], dtype=np.int32)
        feeds = {"input_ids": np.ascontiguousarray(ids, dtype=np.int64), "attention_mask": mask, "position_ids": pos, "beam_idx": beam}
        self.request.infer(feeds, share_inputs=True)
        return self.request.get_tensor("logits").data

    def _run(self, ids: np.ndarray, mask: np.ndarray, pos: np.ndarray) -> np.ndarray:
        return np.array(self._infer(ids, mask, pos)[:, -1], copy=True)

    def logits(self, ids: np.ndarray) -> np.ndarray:
        """All positions' logits of ``ids`` from an empty cache (for scoring)."""
        self.request.reset_state()
        mask = np.ones_like(ids, dtype=np.int64)
        out = np.array(self._infer(ids, mask, positions(mask, ids.shape[1])), copy=True)
        self.request.reset_state()
        return out

    def prefill(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        self.request.reset_state()
        return self._run(ids, mask, positions(mask, ids.shape[1]))

    def decode(self, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self._run(tokens[:, None], mask, positions(mask, 1))


def _streamer(times: list[float]) -> Any:
    """An openvino-genai streamer that timestamps every token it is handed."""
    import openvino_genai as genai

    class TimingStreamer(genai.StreamerBase):
        def write(self, token: Any) -> Any:
            stamp = now()
            times.extend([stamp] * (len(token) if isinstance(token, (list, tuple)) else 1))
            return genai.StreamingStatus.RUNNING

        def end(self) -> None:
            pass

    return TimingStreamer()


class OpenVINOGenerationSession(GenerationSession):
    """LLMPipeline for single-prompt calls (engine genai), a stateful request otherwise."""

    def __init__(self, folder: Path, core: Any, device: str, properties: dict[str, Any], engine: str, pad_id: int) -> None:
        self.folder = folder
        self.core = core
        self.device = device
        self.properties = properties
        self.engine = engine
        self.pad_id = pad_id
        self.pipe: Any = None
        self._stepper: StatefulStepper | None = None
        self.genai_figures: list[tuple[float, float, float]] = []
        if engine == "genai":
            import openvino_genai as genai

            self.pipe = genai.LLMPipeline(str(folder), device, **properties)

    @property
    def stepper(self) -> StatefulStepper:
        if self._stepper is None:
            compiled = self.core.compile_model(str(self.folder / "openvino_model.xml"), self.device, self.properties)
            self._stepper = StatefulStepper(compiled)
        return self._stepper

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, decoding: Decoding = GREEDY) -> list[GenerationOutput]:
        if self.pipe is not None and len(prompts) == 1:
            return [self._genai(prompts[0], max_new_tokens, decoding)]
        return run_loop(self.stepper, prompts, max_new_tokens, decoding, self.pad_id)

    def _genai(self, prompt: Sequence[int], max_new_tokens: int, decoding: Decoding) -> GenerationOutput:
        import openvino as ov
        import openvino_genai as genai

        config = genai.GenerationConfig()
        config.max_new_tokens = max_new_tokens
        config.min_new_tokens = max_new_tokens
        config.ignore_eos = True
        config.do_sample = not decoding.greedy
        if not decoding.greedy:
            config.temperature, config.top_p, config.rng_seed = decoding.temperature, decoding.top_p, decoding.seed
            if decoding.top_k:  # 0 = no top-k limit, which is genai's default
                config.top_k = decoding.top_k
        ids = np.asarray([prompt], dtype=np.int64)
        times: list[float] = []
        streamer = _streamer(times)
        start = now()
        result = self.pipe.generate(genai.TokenizedInputs(ov.Tensor(ids), ov.Tensor(np.ones_like(ids))), config, streamer)
        metrics = result.perf_metrics
        self.genai_figures.append((metrics.get_ttft().mean, metrics.get_tpot().mean, metrics.get_throughput().mean))
        tokens = [int(t) for t in result.tokens[0]]
        return GenerationOutput(tokens, times[: len(tokens)], start, len(prompt))

    def score(self, ids: np.ndarray) -> np.ndarray:
        return next_token_logprobs(self.stepper.logits(ids), ids)

    def begin_measurement(self) -> None:
        self.genai_figures.clear()

    def metrics(self) -> dict[str, Any]:
        import openvino as ov

        out: dict[str, Any] = {
            "engine": (
                "openvino-genai LLMPipeline " + _version("openvino-genai")
                if self.engine == "genai"
                else f"openvino {ov.__version__} stateful InferRequest + harness token loop"
            ),
            "kv_cache": "state variables inside the model (stateful IR)",
            "kv_cache_precision": self.properties["KV_CACHE_PRECISION"],
            "inference_precision": self.properties["INFERENCE_PRECISION_HINT"],
            # > 0: activations meeting int8/int4 weights are quantized per call in groups this size
            "dynamic_quantization_group_size": self._property("DYNAMIC_QUANTIZATION_GROUP_SIZE"),
            "model_folder": str(self.folder),
        }
        if self.genai_figures:  # openvino-genai's own PerfMetrics, mean over calls: a cross-check
            ttft, tpot, throughput = (float(np.mean(column)) for column in zip(*self.genai_figures))
            out["genai_perf_metrics"] = {
                "ttft_ms_mean": ttft,
                "tpot_ms_mean": tpot,
                "throughput_tokens_per_s_mean": throughput,
                "calls": len(self.genai_figures),
            }
        return out

    def _property(self, name: str) -> Any:
        """A compile property as this session set it, else the device's default (None if unknown)."""
        if name in self.properties:
            return self.properties[name]
        try:
            return self.core.get_property(self.device, name)
        except RuntimeError:
            return None

    def close(self) -> None:
        self.pipe = None
        self._stepper = None


def compute_precision(plan: GenerationPlan) -> str:
    """The precision the model computes in: weight-only int8/int4 keep float activations (fp32)."""
    return "fp32" if plan.weights is not None else plan.precision


def prepare(backend: Any, source: Any, plan: GenerationPlan, properties: dict[str, Any]) -> OpenVINOGenerationSession:
    """Build (or reuse) the genai model folder (weight-compressed for int8/int4) and open the engine
    ``backend.generation_engine`` picks, compiled with the backend's ``properties`` (its
    ``compile_config`` for :func:`compute_precision`)."""
    compute = compute_precision(plan)
    if compute not in PRECISION:
        raise Unsupported(
            f"openvino generation runs fp32, bf16 or fp16, or int8/int4 weights, not {plan.precision}",
            "use scenario.precision=fp32, or +scenario=llm_int8 / llm_int4",
        )
    backend.check_device_precision(compute)
    folder = weight_compressed_folder(backend, source, plan.weights) if plan.weights else genai_folder(source, backend.core)
    engine = backend.options.generation_engine
    if engine == "auto":
        engine = "genai" if plan.max_batch_size == 1 and _version("openvino-genai") != "missing" else "stateful"
    elif engine == "genai" and _version("openvino-genai") == "missing":
        raise Unavailable(
            "openvino-genai is not installed, so backend.generation_engine=genai cannot run",
            "pip install openvino-genai (the harness[openvino] extra has it), or backend.generation_engine=stateful",
        )
    properties = dict(properties)
    properties["KV_CACHE_PRECISION"] = PRECISION[compute]
    pad = source.tokenizer.pad_token_id if source.tokenizer is not None else 0
    try:
        return OpenVINOGenerationSession(folder, backend.core, backend.options.device, properties, engine, int(pad or 0))
    except RuntimeError as exc:
        raise HarnessError(f"openvino-genai could not open {folder}: {exception_line(exc, 300)}") from exc
