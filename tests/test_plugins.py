"""Plugin manager: discovery, documented hooks, broken plugins reported, duplicates refused."""

import inspect
import types

import pytest

from harness import hookspecs
from harness.backend import Availability, Backend, Capabilities
from harness.errors import ConfigError
from harness.plugins import load_plugins


def test_builtins_are_discovered_through_entry_points():
    plugins = load_plugins()
    assert {"onnxruntime", "pytorch"} <= set(plugins.registry.backends)
    assert "inference" in plugins.registry.scenarios
    origin = plugins.registry.plugin_of("backends", "onnxruntime")
    assert origin is not None and origin.package == "harness"


def test_every_hook_is_prefixed_and_documented():
    hooks = [f for name, f in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("harness_")]
    assert hooks
    for hook in hooks:
        assert hook.__doc__ and len(hook.__doc__.strip()) > 20, hook.__name__


def _backend_module(name: str, **attrs):
    class Fake(Backend):
        options_type = dict

        @classmethod
        def probe(cls, options):
            return Availability(True)

        def capabilities(self):
            return Capabilities()

        def prepare(self, artifact, precision):
            raise NotImplementedError

    Fake.name = name
    module = types.ModuleType(f"fake_{name}")

    @hookspecs.hookimpl
    def harness_register_backends(registry):
        registry.add_backend(Fake)

    module.harness_register_backends = harness_register_backends
    for key, value in attrs.items():
        setattr(module, key, value)
    return module


def test_extra_plugin_registers_a_backend():
    plugins = load_plugins(extra=[("fakeaccel", _backend_module("fakeaccel"))])
    assert "fakeaccel" in plugins.registry.backends
    assert not plugins.problems


def test_plugin_for_other_api_major_is_refused_with_its_name():
    plugins = load_plugins(extra=[("oldaccel", _backend_module("oldaccel", HARNESS_PLUGIN_API="0.9"))])
    assert "oldaccel" not in plugins.registry.backends
    assert any(p.name == "oldaccel" and "plugin API" in p.error for p in plugins.problems)


def test_unknown_hook_is_reported_not_fatal():
    module = types.ModuleType("typo")

    @hookspecs.hookimpl
    def harness_register_backendz(registry):
        pass

    module.harness_register_backendz = harness_register_backendz
    plugins = load_plugins(extra=[("typo", module)])
    assert any(p.name == "typo" for p in plugins.problems)
    assert "onnxruntime" in plugins.registry.backends


def test_duplicate_backend_name_is_reported_naming_both_plugins():
    plugins = load_plugins(extra=[("dup", _backend_module("onnxruntime"))])
    problem = next(p for p in plugins.problems if p.name == "dup")
    assert "registered twice" in problem.error and "onnxruntime" in problem.error


def test_registration_error_does_not_stop_other_plugins():
    module = types.ModuleType("raiser")

    @hookspecs.hookimpl
    def harness_register_backends(registry):
        raise RuntimeError("boom")

    module.harness_register_backends = harness_register_backends
    plugins = load_plugins(extra=[("raiser", module)])
    assert any(p.name == "raiser" and "boom" in p.error for p in plugins.problems)
    assert "pytorch" in plugins.registry.backends


def test_unknown_scenario_kind_is_a_config_error():
    with pytest.raises(ConfigError):
        load_plugins().registry.scenario("nope")


def test_harness_plugins_env_loads_a_module_without_installing(monkeypatch, tmp_path):
    (tmp_path / "envplugin.py").write_text(
        "from harness.hookspecs import hookimpl\n"
        "from harness.backends.onnxruntime import OnnxRuntimeBackend\n"
        "class Other(OnnxRuntimeBackend):\n    name = 'envaccel'\n"
        "@hookimpl\ndef harness_register_backends(registry):\n    registry.add_backend(Other)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("HARNESS_PLUGINS", "envplugin")
    plugins = load_plugins()
    assert "envaccel" in plugins.registry.backends
    assert plugins.registry.plugin_of("backends", "envaccel").package == "envplugin"


def test_harness_plugins_env_with_missing_module_is_a_warning(monkeypatch):
    monkeypatch.setenv("HARNESS_PLUGINS", "no_such_plugin_module")
    plugins = load_plugins()
    assert any(p.name == "no_such_plugin_module" and "import failed" in p.error for p in plugins.problems)
    assert "onnxruntime" in plugins.registry.backends
