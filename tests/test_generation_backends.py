"""Each generation backend on llama_tiny: KV-cache correctness, padding, scoring, the export stage.

The ground truth for greedy decoding is the simplest possible one: for each prompt alone
(no padding), recompute the whole sequence with the eager fp32 model and no cache, take
the arg-max, append, repeat. A backend's cached, batched, left-padded greedy tokens must
equal it token for token.
"""

from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest

from harness.errors import Unsupported
from harness.generation.session import Decoding, GenerationPlan, check_outputs

NEW_TOKENS = 10
PROMPTS = [[734, 361, 412, 262, 377, 257, 380, 359, 525, 262, 379, 257], [299, 41, 87, 120, 99, 101, 77, 55, 66]]

needs_genai = pytest.mark.skipif(importlib.util.find_spec("openvino_genai") is None, reason="openvino-genai is not installed (the harness[llm] extra)")


def greedy_without_cache(module, prompt: list[int], new_tokens: int) -> list[int]:
    import torch

    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(new_tokens):
            logits = module(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1]
            ids.append(int(logits.argmax()))
    return ids[len(prompt) :]


@pytest.fixture(scope="module")
def expected(llama_source) -> list[list[int]]:
    return [greedy_without_cache(llama_source.module, p, NEW_TOKENS) for p in PROMPTS]


@pytest.fixture(scope="module")
def windows(llama_source) -> np.ndarray:
    from harness.generation import corpus

    stream = corpus.token_stream(llama_source.tokenizer, corpus.build_corpus(5, 20).eval)
    return corpus.windows(stream, 24, 3)


def backend(name: str, **options):
    from harness.config import typed
    from harness.plugins import load_plugins

    cls = load_plugins().registry.backend(name)
    return cls(typed(cls.options_type, options, "backend"))


def check_session(session, expected, llama_source, windows, one_by_one: bool = False) -> None:
    """Cached greedy tokens equal the no-cache recompute; timestamps honour the contract; scores match eager."""
    from harness.generation.quality import eager_logprobs

    calls = [[p] for p in PROMPTS] if one_by_one else [PROMPTS]
    outputs = []
    for prompts in calls:
        got = session.generate(prompts, NEW_TOKENS)
        check_outputs(got, len(prompts), "test")
        outputs += got
    assert [o.tokens for o in outputs] == expected
    assert [o.prompt_tokens for o in outputs] == [len(p) for p in PROMPTS]
    assert all(len(o.token_times) == NEW_TOKENS for o in outputs)
    for _ in range(2):  # a session is reusable: each call starts afresh, at another batch size too
        assert [o.tokens for o in session.generate(PROMPTS[:1], NEW_TOKENS)] == expected[:1]
    got = session.score(windows)
    assert got.shape == (len(windows), windows.shape[1] - 1)
    assert np.max(np.abs(got - eager_logprobs(llama_source.module, windows))) < 1e-3
    assert isinstance(session.metrics(), dict) and isinstance(session.memory(), dict)
    session.close()
    session.close()


def test_eager_generate_reference_equals_the_no_cache_recompute(llama_source, expected) -> None:
    """The agreement reference (transformers generate, equal-length prompts) is the same greedy decode."""
    from harness.generation.quality import eager_greedy

    prompt = np.array([PROMPTS[0]])
    assert eager_greedy(llama_source.module, prompt, NEW_TOKENS).tolist() == [expected[0]]


def test_pytorch_kv_cache_and_padding_match_no_cache(llama_source, expected, windows) -> None:
    session = backend("pytorch").prepare_generation(llama_source, GenerationPlan("fp32", 2, 12, NEW_TOKENS))
    assert session.metrics()["kv_cache"] == "DynamicCache"
    check_session(session, expected, llama_source, windows)


def test_pytorch_bf16_runs_a_cast_copy_and_fp16_is_refused_on_the_cpu(llama_source) -> None:
    import torch

    session = backend("pytorch").prepare_generation(llama_source, GenerationPlan("bf16", 2, 12, NEW_TOKENS))
    out = session.generate(PROMPTS, NEW_TOKENS)
    check_outputs(out, 2, "pytorch")
    assert session.metrics()["dtype"] == "bfloat16"
    assert next(llama_source.module.parameters()).dtype == torch.float32  # the reference is untouched
    with pytest.raises(Unsupported, match="fp16"):
        backend("pytorch").prepare_generation(llama_source, GenerationPlan("fp16", 1, 12, NEW_TOKENS))


def test_sampling_is_reproducible_with_its_seed(llama_source) -> None:
    session = backend("pytorch").prepare_generation(llama_source, GenerationPlan("fp32", 2, 12, NEW_TOKENS))
    sample = Decoding("sample", temperature=1.5, top_k=50, seed=11)
    first, second = (session.generate(PROMPTS, NEW_TOKENS, sample) for _ in range(2))
    assert [o.tokens for o in first] == [o.tokens for o in second]


@pytest.mark.slow
def test_pytorch_compiled_static_cache_matches_no_cache(llama_source, expected, windows) -> None:
    session = backend("pytorch", compile=True).prepare_generation(llama_source, GenerationPlan("fp32", 2, 12, NEW_TOKENS))
    assert session.metrics()["kv_cache"] == "StaticCache"
    check_session(session, expected, llama_source, windows)


def test_onnxruntime_iobinding_matches_no_cache(llama_source, expected, windows) -> None:
    session = backend("onnxruntime").prepare_generation(llama_source, GenerationPlan("fp32", 2, 12, NEW_TOKENS))
    assert "IOBinding" in session.metrics()["engine"]
    assert llama_source.stages["export"]["max_abs_diff"] <= 1e-3
    check_session(session, expected, llama_source, windows)
    with pytest.raises(Unsupported, match="fp32 decoder export"):
        backend("onnxruntime").prepare_generation(llama_source, GenerationPlan("bf16", 1, 12, NEW_TOKENS))


@pytest.mark.openvino
@needs_genai
def test_openvino_llmpipeline_matches_no_cache(llama_source, expected, windows) -> None:
    ov = backend("openvino")
    session = ov.prepare_generation(llama_source, GenerationPlan("fp32", 1, 12, NEW_TOKENS))
    assert session.engine == "genai" and llama_source.stages["openvino_ir"]["tokenizer"] == "converted"
    session.begin_measurement()
    check_session(session, expected, llama_source, windows, one_by_one=True)


@pytest.mark.openvino
def test_openvino_stateful_request_matches_no_cache(llama_source, expected, windows) -> None:
    session = backend("openvino", generation_engine="stateful").prepare_generation(llama_source, GenerationPlan("fp32", 2, 12, NEW_TOKENS))
    metrics = session.metrics()
    assert session.engine == "stateful" and (metrics["kv_cache_precision"], metrics["inference_precision"]) == ("f32", "f32")
    check_session(session, expected, llama_source, windows)


@pytest.mark.openvino
@needs_genai
def test_openvino_genai_perf_metrics_cover_measured_calls(llama_source) -> None:
    session = backend("openvino").prepare_generation(llama_source, GenerationPlan("fp32", 1, 12, NEW_TOKENS))
    session.generate(PROMPTS[:1], NEW_TOKENS)  # a warm-up call
    session.begin_measurement()
    for _ in range(2):
        session.generate(PROMPTS[:1], NEW_TOKENS)
    figures = session.metrics()["genai_perf_metrics"]
    assert figures["calls"] == 2 and figures["ttft_ms_mean"] > 0 and figures["tpot_ms_mean"] > 0


# --- the decoder export stage ----------------------------------------------------------------


def test_decoder_export_is_cached_rebuilt_when_corrupt_and_validated(llama_source) -> None:
    from harness.generation.onnx_export import export_decoder, io_names

    first = export_decoder(llama_source)
    second = export_decoder(llama_source)
    assert second.cached and second.path == first.path and second.max_abs_diff <= 1e-3
    import onnx

    graph = onnx.load(str(first.path))
    inputs, outputs = io_names(2)
    assert [i.name for i in graph.graph.input] == inputs and [o.name for o in graph.graph.output] == outputs
    first.path.write_bytes(b"not an onnx file")
    rebuilt = export_decoder(llama_source)
    assert not rebuilt.cached and rebuilt.max_abs_diff <= 1e-3


def test_decoder_export_rebuilds_a_cached_graph_that_is_not_its_own(llama_source, tmp_path) -> None:
    """Another model's graph under this model's key is never used: the entry fails its
    checksums, is discarded with a warning and rebuilt from this model."""
    import copy

    import torch

    from harness.generation.onnx_export import export_decoder
    from harness.generation.session import DecoderSource

    good = export_decoder(llama_source)
    other = copy.deepcopy(llama_source.module)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(0.05)
    impostor = DecoderSource(
        "other", other, llama_source.config, llama_source.tokenizer, llama_source.params, "other-weights", cache_root=str(tmp_path), status=lambda m: None
    )
    foreign = export_decoder(impostor).path
    shutil.copy(foreign, good.path)  # swap the cached graph for another model's
    rebuilt = export_decoder(llama_source)
    assert not rebuilt.cached and rebuilt.max_abs_diff <= 1e-3
    assert rebuilt.path.read_bytes() != foreign.read_bytes()


def test_large_decoders_export_with_external_data(llama_source, tmp_path, monkeypatch) -> None:
    """Above 2 GiB protobuf cannot hold the weights: the graph keeps them in model.onnx.data beside it."""
    import dataclasses

    from harness.generation import onnx_export

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_BYTES", 0)  # treat llama_tiny as large
    source = dataclasses.replace(llama_source, cache_root=str(tmp_path), stages={}, _onnx=None, _folder=None)
    result = onnx_export.export_decoder(source)
    assert (result.path.parent / "model.onnx.data").is_file() and result.max_abs_diff <= 1e-3
    assert result.size_bytes > (result.path.parent / "model.onnx").stat().st_size
    session = backend("onnxruntime").prepare_generation(source, GenerationPlan("fp32", 2, 12, NEW_TOKENS))
    assert len(session.generate(PROMPTS, 2)) == 2


@pytest.mark.openvino
@needs_genai
def test_openvino_llmpipeline_samples_reproducibly(llama_source) -> None:
    session = backend("openvino").prepare_generation(llama_source, GenerationPlan("fp32", 1, 12, NEW_TOKENS))
    sample = Decoding("sample", temperature=1.5, top_k=50, top_p=0.9, seed=5)
    first, second = (session.generate(PROMPTS[:1], NEW_TOKENS, sample)[0].tokens for _ in range(2))
    assert first == second and len(first) == NEW_TOKENS
