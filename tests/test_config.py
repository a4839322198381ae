"""Every config composes, validates into a RunSpec, and bad values name their key."""

from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from importlib import resources

from harness.spec import build_spec
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
    """Composed as the harness command composes (``+scenario=`` is the card's spelling of ``scenario=``)."""
    from harness import compose as harness_compose

    GlobalHydra.instance().clear()
    with harness_compose.hydra_context():
        return harness_compose.compose(list(overrides), [])


def test_default_config_is_the_embedded_inference_scenario(registry):
    spec = build_spec(composed(), registry)
    assert spec.scenario_kind == "inference" and spec.scenario_name == "default"
    assert spec.backend_name == "onnxruntime"
    assert spec.results_dir == Path("results")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_scenario_composes_with_and_without_plus(scenario, registry):
    spec = build_spec(composed(f"+scenario={scenario}"), registry)
    assert spec.scenario_name == scenario
    assert composed(f"scenario={scenario}") == composed(f"+scenario={scenario}")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_scenario_yaml_is_complete_on_its_own(scenario, registry):
    """A scenario is a config-group choice: nothing is merged in from another kind's keys, so
    every key of the YAML is a field of its own kind's options."""
    import dataclasses

    from omegaconf import OmegaConf

    section = OmegaConf.to_container(composed(f"scenario={scenario}").scenario, resolve=True)
    kind = registry.scenario(section["kind"])
    fields = {f.name for f in dataclasses.fields(kind.options_type)}
    assert set(section) - {"name", "kind"} <= fields


def _disagreements(yaml_section, options_type):
    """Keys whose YAML value differs from the dataclass default (nested dataclasses too)."""
    import dataclasses

    defaults = dataclasses.asdict(options_type())
    found = []

    def walk(yaml_node, default_node, prefix):
        for key, value in yaml_node.items():
            if key in ("name", "kind") and not prefix:
                continue
            default = default_node.get(key, "<no such field>")
            if isinstance(value, dict) and isinstance(default, dict) and key != "config":
                walk(value, default, f"{prefix}{key}.")
            elif value != default:
                found.append(f"{prefix}{key}: yaml {value!r} != dataclass {default!r}")

    walk(yaml_section, defaults, "")
    return found


def test_defaults_have_one_value(registry):
    """Each default is written once: where a YAML gives the defaults of an options dataclass
    (the default scenario, each backend's own YAML, the launcher and hardware sections),
    the dataclass default agrees with it."""
    from omegaconf import OmegaConf

    from harness.config import HardwareOptions
    from harness.data import DatasetOptions
    from harness.launcher import LauncherOptions
    from harness.models import ModelOptions

    cfg = OmegaConf.to_container(composed(), resolve=True)
    problems = _disagreements(cfg["scenario"], registry.scenario("inference").options_type)
    problems += _disagreements(cfg["launcher"], LauncherOptions)
    problems += _disagreements(cfg["hardware"], HardwareOptions)
    problems += _disagreements(cfg["dataset"], DatasetOptions)
    # the default model's YAML (its transformers config aside: a dataclass default of {} means "the library's")
    problems += _disagreements({k: v for k, v in cfg["model"].items() if k != "config"}, ModelOptions)
    for name, cls in registry.backends.items():
        if name in BACKENDS:
            section = OmegaConf.to_container(composed(f"backend={name}").backend, resolve=True)
            problems += [f"backend {name}: {p}" for p in _disagreements(section, cls.options_type)]
    assert not problems, problems


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
