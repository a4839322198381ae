"""Weight-only int8/int4 of decoder LLMs (``+scenario=llm_int8`` / ``llm_int4``).

Each backend realises the recipe with its own tool; every artifact must be smaller than
the fp32 one it came from, score close to (but not exactly as) eager fp32, be cached
where the artifact is a file, and a recipe a backend cannot honour exactly is refused in
one line. The CLI run fills perplexity relative to fp32, greedy agreement and the sizes.
"""

from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np
import pytest

from conftest import records_in, run_cli

from harness import records
from harness.compression.recipes import WeightRecipe
from harness.errors import Unsupported
from harness.generation.session import GenerationPlan, check_outputs
from harness.testing import GENERATION_OVERRIDES

PROMPTS = [[734, 361, 412, 262, 377, 257, 380, 359, 525, 262, 379, 257], [299, 41, 87, 120, 99, 101, 77, 55, 66]]
#: llama_tiny's widths are 64 and 176: int4 groups must divide them where the tool refuses otherwise.
GROUP = {"onnxruntime": 16, "openvino": 16, "pytorch": 32, "llamacpp": None}


def backend(name: str, **options):
    from harness.config import typed
    from harness.plugins import load_plugins

    cls = load_plugins().registry.backend(name)
    return cls(typed(cls.options_type, options, "backend"))


@pytest.fixture()
def source(llama_source, tmp_path):
    """llama_tiny in a fresh cache, so each test sees its own compression stage."""
    return dataclasses.replace(llama_source, cache_root=str(tmp_path), stages={}, _onnx=None, _folder=None)


def _needs(name: str) -> None:
    if name == "openvino" and importlib.util.find_spec("nncf") is None:
        pytest.skip("nncf is not installed (the harness[openvino] extra)")
    if name == "llamacpp":
        from harness.errors import HarnessError
        from harness.serving.gguf import converter_dir

        if importlib.util.find_spec("llama_cpp") is None:
            pytest.skip("llama-cpp-python is not installed (the harness[llamacpp] extra)")
        try:
            converter_dir()
        except HarnessError as exc:
            pytest.skip(exc.one_line())


# --- the recipe ------------------------------------------------------------------------------


def test_weight_recipe_names_and_checks() -> None:
    assert WeightRecipe("int4", 64, 0.8).name == "int4_weights" and WeightRecipe("int8").bits == 8
    with pytest.raises(ValueError, match="quantization.ratio"):
        WeightRecipe("int8", None, 0.5)  # mixing int4 with int8 needs int4
    with pytest.raises(ValueError, match="quantization.group_size"):
        WeightRecipe("int4", 0)
    with pytest.raises(ValueError, match="precision"):
        WeightRecipe("int3")


def test_generation_options_carry_the_recipe_only_for_weight_only_precisions() -> None:
    from harness.scenarios.generation import GenerationOptions, WeightQuantizationOptions

    opts = GenerationOptions(precision="int4", quantization=WeightQuantizationOptions(group_size=32, ratio=0.75))
    assert opts.weight_recipe() == WeightRecipe("int4", 32, 0.75)
    assert GenerationOptions(precision="fp32").weight_recipe() is None
    with pytest.raises(ValueError, match="quantization"):
        GenerationOptions(precision="fp32", quantization=WeightQuantizationOptions(group_size=32))


# --- every backend ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["pytorch", "onnxruntime", pytest.param("openvino", marks=pytest.mark.openvino), pytest.param("llamacpp", marks=pytest.mark.llamacpp)]
)
@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_weight_only_artifacts_are_smaller_and_scored(name, precision, source) -> None:
    from harness.generation.quality import eager_logprobs

    _needs(name)
    recipe = WeightRecipe(precision, GROUP[name] if precision == "int4" else None)
    options = {"threads": 2} if name == "llamacpp" else {}
    session = backend(name, **options).prepare_generation(source, GenerationPlan(precision, 2, 12, 6, recipe))
    try:
        stage = source.stages["compression"]
        assert stage["requested"] == recipe.describe() and stage["recipe"]["name"] == recipe.name
        assert 0 < stage["size_bytes"] < stage["fp32_size_bytes"], stage
        assert stage["fp32_artifact"]
        outputs = session.generate(PROMPTS, 6)
        check_outputs(outputs, 2, name)
        windows = np.random.default_rng(0).integers(1, 700, size=(2, 24))
        diff = np.max(np.abs(session.score(windows) - eager_logprobs(source.module, windows)))
        assert 0 < diff < (0.05 if precision == "int8" else 0.5), diff  # quantized, yet the same model
    finally:
        session.close()


@pytest.mark.parametrize("name", ["onnxruntime", pytest.param("openvino", marks=pytest.mark.openvino)])
def test_compressed_decoders_are_cached(name, source) -> None:
    _needs(name)
    recipe = WeightRecipe("int4", 16)
    for cached in (False, True):
        backend(name).prepare_generation(source, GenerationPlan("int4", 1, 12, 6, recipe)).close()
        assert source.stages["compression"]["cached"] is cached
    from pathlib import Path

    folder = Path(source.cache_root) / "compressed" / source.stages["compression"]["key"]
    assert (folder / "checksums.json").is_file() and (folder / "meta.json").is_file()


def test_onnxruntime_quantizes_every_linear_layer_and_the_tied_lm_head(source) -> None:
    import onnx

    recipe = WeightRecipe("int4", 16)
    session = backend("onnxruntime").prepare_generation(source, GenerationPlan("int4", 1, 12, 6, recipe))
    graph = onnx.load(session.path).graph
    ops = [node.op_type for node in graph.node]
    # 2 layers x (q, k, v, o, gate, up, down) + the LM head: the tied head's Transpose is folded
    assert ops.count("MatMulNBits") == 15 and "Transpose" in ops
    head = next(node for node in graph.node if "logits" in node.output)
    assert head.op_type == "MatMulNBits" and next(a.i for a in head.attribute if a.name == "bits") == 8
    body_bits = {next(a.i for a in n.attribute if a.name == "bits") for n in graph.node if n.op_type == "MatMulNBits" and n is not head}
    assert body_bits == {4}
    assert source.stages["compression"]["recipe"]["layers"] == {"int4": 14, "int8 (LM head)": 1}
    session.close()


@pytest.mark.parametrize(
    "name, recipe, match",
    [
        ("onnxruntime", WeightRecipe("int4", 16, 0.5), "one bit width"),
        ("onnxruntime", WeightRecipe("int4", 24), "power of two"),
        ("pytorch", WeightRecipe("int4", 16), "groups of 32, 64, 128, 256"),
        ("pytorch", WeightRecipe("int8", 64), "per output channel"),
        ("pytorch", WeightRecipe("int4", 256), "none would be int4"),  # llama_tiny: widths 64 and 176, no silent all-int8 'int4'
        pytest.param("openvino", WeightRecipe("int4", 24), "groups of 24", marks=pytest.mark.openvino),
        pytest.param("openvino", WeightRecipe("int8", 64), "per output channel", marks=pytest.mark.openvino),
        pytest.param("llamacpp", WeightRecipe("int4", 64), "fixes its blocks", marks=pytest.mark.llamacpp),
    ],
)
def test_a_recipe_a_backend_cannot_honour_is_refused_in_one_line(name, recipe, match, source) -> None:
    _needs(name)
    with pytest.raises(Unsupported, match=match) as refused:
        backend(name).prepare_generation(source, GenerationPlan(recipe.precision, 1, 12, 6, recipe))
    assert "\n" not in refused.value.one_line()


@pytest.mark.openvino
def test_openvino_mixed_precision_follows_the_ratio(source) -> None:
    _needs("openvino")
    session = backend("openvino", generation_engine="stateful").prepare_generation(source, GenerationPlan("int4", 1, 12, 6, WeightRecipe("int4", 16, 0.5)))
    counts = source.stages["compression"]["recipe"]["parameters_by_precision"]
    assert counts["int4"] > 0 and counts["int8"] > 0
    assert session.metrics()["dynamic_quantization_group_size"] is not None
    session.close()


# --- the CLI ------------------------------------------------------------------------------------------

#: The conformance kit's quick generation run, at a group size that divides llama_tiny's widths.
QUICK = [*GENERATION_OVERRIDES, "scenario.quantization.group_size=16", "launcher.host_lock=false"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["onnxruntime", pytest.param("openvino", marks=pytest.mark.openvino)])
def test_llm_int4_writes_relative_perplexity_agreement_and_sizes(name, tmp_path) -> None:
    _needs(name)
    proc = run_cli("+scenario=llm_int4", f"backend={name}", *QUICK, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (rec,) = records_in(tmp_path / "results")
    records.validate(rec)
    assert rec["status"] == "ok" and rec["scenario"]["precision"] == "int4"
    accuracy = rec["metrics"]["accuracy"]
    assert accuracy["relative"] is not None and 0.5 < accuracy["relative"] < 1.5 and accuracy["agreement"] is not None
    compression = rec["metrics"]["compression"]
    assert compression["size_bytes"] < compression["fp32_size_bytes"]
    assert compression["size_ratio"] == pytest.approx(compression["size_bytes"] / compression["fp32_size_bytes"])
    assert rec["metrics"]["generation"]["kv_cache_bytes"] == 2 * 2 * 1 * 2 * 24 * 16 * 4  # the cache stays fp32


def test_quantization_keys_on_a_float_run_are_one_line_errors(tmp_path) -> None:
    proc = run_cli(
        "+scenario=llm_fp32", "backend=pytorch", "model=llama_tiny", "+scenario.quantization.group_size=32", "launcher.host_lock=false", cwd=tmp_path
    )
    assert proc.returncode == 2 and "scenario.quantization" in proc.stderr and "llm_int4" in proc.stderr
    assert "Traceback" not in proc.stderr
