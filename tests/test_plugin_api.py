"""Plugin API 2: what the core hands a backend and what it takes from it (docs/plugins.md)."""

from __future__ import annotations

import dataclasses
import types
from types import SimpleNamespace

import numpy as np

from harness import hookspecs
from harness.backend import Availability, Backend, Capabilities, Session
from harness.errors import Unsupported
from harness.plugins import load_plugins


def test_hookimpl_is_importable_from_the_package():
    from harness import hookimpl

    assert hookimpl is hookspecs.hookimpl
    assert hookspecs.PLUGIN_API_VERSION.split(".")[0] == "2"


def _module(name: str, api: str | None, cls: type) -> types.ModuleType:
    module = types.ModuleType(f"plugin_{name}")

    @hookspecs.hookimpl
    def harness_register_backends(registry):
        registry.add_backend(cls)

    module.harness_register_backends = harness_register_backends
    if api is not None:
        module.HARNESS_PLUGIN_API = api
    return module


class _Tiny(Backend):
    name = "tiny"
    options_type = dict

    @classmethod
    def probe(cls, options):
        return Availability(True, devices=("cpu",), versions={cls.name: "9.9"})

    def capabilities(self):
        return Capabilities(consumes=("torch",))

    def prepare(self, artifact, precision):
        raise Unsupported("tiny prepares nothing")


def test_api_1_still_loads_with_a_deprecation_warning_and_api_3_is_refused():
    old = type("OldAccel", (_Tiny,), {"name": "oldaccel"})
    new = type("NewAccel", (_Tiny,), {"name": "newaccel"})
    future = type("FutureAccel", (_Tiny,), {"name": "futureaccel"})
    plugins = load_plugins(
        extra=[("oldaccel", _module("oldaccel", "1", old)), ("newaccel", _module("newaccel", "2", new)), ("futureaccel", _module("futureaccel", "3", future))]
    )
    assert {"oldaccel", "newaccel"} <= set(plugins.registry.backends) and "futureaccel" not in plugins.registry.backends
    (line,) = [d for d in plugins.deprecations if "'oldaccel'" in d]
    assert "plugin API 1" in line and "fix:" in line and "\n" not in line
    assert not any("'newaccel'" in d for d in plugins.deprecations)
    assert plugins.legacy("backends", "oldaccel") and not plugins.legacy("backends", "newaccel")
    assert any(p.name == "futureaccel" and "plugin API 3" in p.error for p in plugins.problems)


def test_artifact_carries_a_workspace_that_the_run_removes(tmp_path):
    """A per-backend cache folder kept across runs and a work folder for this run only."""
    from harness.context import RunContext

    spec = SimpleNamespace(cache_dir=str(tmp_path), model=SimpleNamespace(checkpoint=None))
    ctx = RunContext(spec=spec, backend=_Tiny({}), status=lambda _m: None)  # type: ignore[arg-type]
    model = SimpleNamespace(name="m", input_names=("x",), output_names=("y",), module=object())
    artifact, _ = ctx.artifact(model, None, {"x": np.zeros((4, 3), dtype=np.float32)})
    workspace = artifact.workspace
    assert workspace is not None and workspace.cache_dir == tmp_path / "backends" / "tiny" and workspace.cache_dir.is_dir()
    assert workspace.workdir.is_dir() and workspace.workdir.parent == tmp_path / "work"
    assert artifact.meta["sample_shape"] == {"x": [4, 3]}
    (workspace.workdir / "engine.plan").write_bytes(b"x")
    (workspace.cache_dir / "kept.bin").write_bytes(b"x")
    ctx.close()
    assert not workspace.workdir.exists() and (workspace.cache_dir / "kept.bin").exists()


class _ShapeRecorder(Session):
    """A session that records every batch shape it is given."""

    def __init__(self):
        self.shapes: list[tuple[int, ...]] = []

    def run(self, inputs):
        self.shapes.append(inputs["x"].shape)
        return inputs["x"][:, :2] * 2.0

    def fetch(self, outputs):
        return {"logits": np.asarray(outputs)}


def test_every_batch_a_session_gets_has_the_sample_shape():
    """The last partial batch is padded to the full shape; its padding never reaches the result."""
    from harness.accuracy import session_logits
    from harness.scenarios.distillation import logits_of

    features = {"x": np.arange(30, dtype=np.float32).reshape(10, 3)}
    for collect in (lambda s: session_logits(s, features, 4, "logits"), lambda s: logits_of(s, features, "logits", 4)):
        session = _ShapeRecorder()
        logits = collect(session)
        assert session.shapes == [(4, 3)] * 3
        np.testing.assert_array_equal(logits, features["x"][:, :2] * 2.0)


def test_record_takes_the_version_from_the_probe_and_the_device_from_the_session():
    """One source each; a plugin-API-1 backend's version() and device() are still read."""
    from harness.runner import base_record, execute
    from harness.testing import compose_spec

    class Refusing(_Tiny):
        def version(self):
            return "from-version()"

        def device(self):
            return "from-device()"

    for api, name in (("2", "apitwo"), ("1", "apione")):
        cls = type(f"B{api}", (Refusing,), {"name": name})
        plugins = load_plugins(extra=[(name, _module(name, api, cls))])
        spec = compose_spec("onnxruntime", (), plugins)
        spec = dataclasses.replace(spec, backend_name=name, backend_options={})
        record = execute(spec, plugins, status=lambda _m: None, record=base_record(spec, plugins))
        assert record["status"] == "unsupported", record["reason"]  # the tiny backend prepares nothing
        if api == "2":
            assert record["backend"]["version"] == "9.9" and record["backend"]["device"] == "unknown"
        else:
            assert record["backend"]["version"] == "from-version()" and record["backend"]["device"] == "from-device()"
