"""Broken plugins are reported, named, and never stop the other backends.

Three plugin modules, loaded through ``HARNESS_PLUGINS`` from a temp folder exactly as an
installed plugin's module would be: one raises on import, one registers a backend whose
``probe`` raises, one was built for another plugin-API major version.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import FAST, records_in, run_cli

from harness import records

pytestmark = pytest.mark.slow

BROKEN_IMPORT = """
raise RuntimeError("vendor SDK libfoo.so.3 not found")
"""

RAISING_PROBE = """
from pathlib import Path

from harness.backends.onnxruntime import OnnxRuntimeBackend
from harness.hookspecs import hookimpl


class RaisingBackend(OnnxRuntimeBackend):
    name = "raisingaccel"

    @classmethod
    def probe(cls, options):
        raise RuntimeError("driver exploded")


@hookimpl
def harness_register_backends(registry):
    registry.add_backend(RaisingBackend)


@hookimpl
def harness_config_searchpath():
    return [(Path(__file__).parent / "raising_conf").as_uri()]
"""

FUTURE_API = """
from harness.backends.onnxruntime import OnnxRuntimeBackend
from harness.hookspecs import hookimpl

HARNESS_PLUGIN_API = "3"


class FutureBackend(OnnxRuntimeBackend):
    name = "futureaccel"


@hookimpl
def harness_register_backends(registry):
    registry.add_backend(FutureBackend)
"""


@pytest.fixture
def plugin_env(tmp_path: Path) -> dict[str, str]:
    folder = tmp_path / "plugins"
    (folder / "raising_conf" / "backend").mkdir(parents=True)
    (folder / "broken_import_plugin.py").write_text(BROKEN_IMPORT)
    (folder / "raising_probe_plugin.py").write_text(RAISING_PROBE)
    (folder / "future_plugin.py").write_text(FUTURE_API)
    (folder / "raising_conf" / "backend" / "raisingaccel.yaml").write_text("name: raisingaccel\n")
    return {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])),
        "HARNESS_PLUGINS": "broken_import_plugin,raising_probe_plugin,future_plugin",
    }


def _rows(stdout: str) -> dict[str, str]:
    return {line.split("│")[1].strip(): line for line in stdout.splitlines() if line.startswith("│")}


def test_broken_plugins_do_not_stop_an_onnxruntime_run(plugin_env: dict[str, str], tmp_path: Path) -> None:
    proc = run_cli("+scenario=bert_fp32", "backend=onnxruntime", *FAST, cwd=tmp_path, env=plugin_env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "plugin 'broken_import_plugin' was skipped: import failed: RuntimeError: vendor SDK libfoo.so.3 not found" in proc.stderr
    assert "plugin 'future_plugin' was skipped" in proc.stderr
    assert "Traceback" not in proc.stderr
    (rec,) = records_in(tmp_path / "results")
    records.validate(rec)
    assert rec["status"] == "ok" and rec["backend"]["name"] == "onnxruntime"
    assert "raising_probe_plugin" in {p["name"] for p in rec["plugins"]}  # loaded fine, just not used


def test_harness_backends_reports_each_broken_plugin(plugin_env: dict[str, str], tmp_path: Path) -> None:
    proc = run_cli(cwd=tmp_path, command="harness-backends", env=plugin_env)
    assert proc.returncode == 0, proc.stderr
    rows = _rows(proc.stdout)
    assert "no" in rows["raisingaccel"] and "probe raised RuntimeError: driver exploded" in rows["raisingaccel"]
    assert "raising_probe_plugin" in rows["raisingaccel"]
    assert "yes" in rows["onnxruntime"] and "yes" in rows["pytorch"]
    assert "futureaccel" not in rows
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert any("'broken_import_plugin'" in w and "libfoo.so.3" in w for w in warnings), proc.stderr
    assert any("'future_plugin'" in w and "plugin API 3" in w for w in warnings), proc.stderr


def test_run_on_a_backend_whose_probe_raises_is_recorded_with_a_reason(plugin_env: dict[str, str], tmp_path: Path) -> None:
    proc = run_cli("+scenario=bert_fp32", "backend=raisingaccel", *FAST, cwd=tmp_path, env=plugin_env)
    assert proc.returncode in (1, 3), proc.stdout + proc.stderr
    (rec,) = records_in(tmp_path / "results")
    records.validate(rec)
    assert rec["status"] in ("failed", "unavailable")
    assert "driver exploded" in rec["reason"] and "\n" not in rec["reason"]
    assert "raising_probe_plugin" in rec["reason"]  # the plugin to blame is named
    assert rec["backend"]["plugin"]["name"] == "raising_probe_plugin"
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "driver exploded" in errors[0], proc.stderr


WRONG_ARGUMENTS = """
from harness.hookspecs import hookimpl


@hookimpl
def harness_register_backends(registry, extra_argument):
    pass
"""


def test_hookimpl_with_wrong_arguments_is_a_warning_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "wrong_args_plugin.py").write_text(WRONG_ARGUMENTS)
    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])),
        "HARNESS_PLUGINS": "wrong_args_plugin",
    }
    proc = run_cli(cwd=tmp_path, command="harness-backends", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "yes" in _rows(proc.stdout)["onnxruntime"]
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line]
    assert any("'wrong_args_plugin'" in w and "extra_argument" in w for w in warnings), proc.stderr
