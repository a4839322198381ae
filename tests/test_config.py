"""Every config composes, validates into a RunSpec, and bad values name their key."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from importlib import resources

from harness.config import build_spec
from harness.errors import ConfigError
from harness.plugins import load_plugins

CONF = resources.files("harness.conf")
SCENARIOS = sorted(p.name[:-5] for p in CONF.joinpath("scenario").iterdir() if p.name.endswith(".yaml"))
BACKENDS = sorted(p.name[:-5] for p in CONF.joinpath("backend").iterdir() if p.name.endswith(".yaml"))
MODELS = sorted(p.name[:-5] for p in CONF.joinpath("model").iterdir() if p.name.endswith(".yaml"))


@pytest.fixture(scope="module")
def registry():
    return load_plugins().registry


def composed(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="harness.conf", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def test_default_config_is_the_embedded_inference_scenario(registry):
    spec = build_spec(composed(), registry)
    assert spec.scenario_kind == "inference" and spec.scenario_name == "default"
    assert spec.backend_name == "onnxruntime"
    assert spec.results_dir == Path("results")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_scenario_composes_with_plus_syntax(scenario, registry):
    spec = build_spec(composed(f"+scenario={scenario}"), registry)
    assert spec.scenario_name == scenario


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_config_composes(backend, registry):
    # variants (pytorch_cuda, onnxruntime_cuda) select a registered backend with other options
    spec = build_spec(composed(f"backend={backend}", "+scenario=bert_fp32"), registry)
    assert spec.backend_name in registry.backends


@pytest.mark.parametrize("model", MODELS)
def test_every_model_builds_a_spec(model, registry):
    spec = build_spec(composed(f"model={model}"), registry)
    assert spec.model.name == model


def test_bert_base_has_the_real_shape():
    cfg = composed("model=bert_base")
    assert (cfg.model.config.hidden_size, cfg.model.config.num_hidden_layers, cfg.model.config.num_attention_heads) == (768, 12, 12)


@pytest.mark.parametrize(
    "override, key",
    [
        ("scenario.batch_size=abc", "scenario.batch_size"),
        ("scenario.batch_size=-1", "scenario.batch_size"),
        ("scenario.precision=int3", "scenario.precision"),
        ("backend.intra_op_threads=-2", "backend.intra_op_threads"),
        ("backend.graph_optimization_level=max", "backend.graph_optimization_level"),
        ("model.num_labels=0", "model.num_labels"),
    ],
)
def test_bad_values_name_the_key(override, key, registry):
    with pytest.raises(ConfigError) as info:
        build_spec(composed("+scenario=bert_fp32", override), registry)
    assert key in info.value.one_line()
    assert "\n" not in info.value.one_line()


def test_unknown_backend_lists_the_available_ones(registry):
    with pytest.raises(ConfigError) as info:
        registry.backend("nope")
    assert "onnxruntime" in info.value.one_line() and "pytorch" in info.value.one_line()
