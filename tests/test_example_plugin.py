"""The external example plugin (examples/harness-plugin-example) driven the way users get it.

Installed path: the example is built into a wheel and installed with pip into a private
folder put on ``PYTHONPATH`` -- the same files ``pip install`` puts in a venv, found through
the real ``harness`` entry point and the packaged Hydra config, without touching the shared
venv. Then ``harness +scenario=bert_fp32 backend=onnxref`` must write an ``ok`` record that
``harness-report`` shows. Checkout path: ``HARNESS_PLUGINS`` loads the uninstalled module.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import FAST, records_in, run_cli

from harness import records

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "harness-plugin-example"
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]


def _rows(stdout: str) -> dict[str, str]:
    return {line.split("│")[1].strip(): line for line in stdout.splitlines() if line.startswith("│")}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example built into a wheel, offline, from a copy (no build/ or egg-info left in the repo)."""
    root = tmp_path_factory.mktemp("example-build")
    source = root / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build", ".pytest_cache"))
    subprocess.run([*PIP, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(root / "dist"), str(source)], check=True)
    (built,) = (root / "dist").glob("harness_plugin_example-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment whose Python sees the example installed by pip (entry point and all)."""
    site = tmp_path_factory.mktemp("example-site")
    subprocess.run([*PIP, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)], check=True)
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])), "HARNESS_PLUGINS": ""}


@pytest.fixture
def checkout() -> dict[str, str]:
    """Environment that loads the uninstalled example module through HARNESS_PLUGINS."""
    return {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(EXAMPLE / "src"), os.environ.get("PYTHONPATH")])),
        "HARNESS_PLUGINS": "harness_plugin_example",
    }


def test_wheel_ships_the_entry_point_and_the_hydra_config(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "harness_plugin_example/conf/backend/onnxref.yaml" in names
    assert "harness_plugin_example/conf/__init__.py" in names
    assert "[harness]" in entry_points and "onnxref = harness_plugin_example" in entry_points


def test_installed_plugin_is_listed_as_available(installed: dict[str, str], tmp_path: Path) -> None:
    proc = run_cli(cwd=tmp_path, command="harness-backends", env=installed)
    assert proc.returncode == 0, proc.stderr
    row = _rows(proc.stdout)["onnxref"]
    assert "harness-plugin-example" in row and "yes" in row and "cpu" in row
    assert "warning" not in proc.stderr


def test_installed_plugin_runs_through_the_cli_and_the_report(installed: dict[str, str], tmp_path: Path) -> None:
    proc = run_cli("+scenario=bert_fp32", "backend=onnxref", *FAST, cwd=tmp_path, env=installed)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "onnxref 0.1.0" in proc.stderr  # the run header names every plugin with its version
    (rec,) = records_in(tmp_path / "results")
    records.validate(rec)
    assert rec["status"] == "ok" and rec["reason"] == ""
    assert rec["backend"]["name"] == "onnxref" and rec["backend"]["device"] == "cpu"
    assert rec["backend"]["plugin"] == {"name": "onnxref", "package": "harness-plugin-example", "version": "0.1.0"}
    assert {"name": "onnxref", "package": "harness-plugin-example", "version": "0.1.0"} in rec["plugins"]
    assert rec["config"]["backend"] == {"name": "onnxref", "verbose": 0, "check_shape_annotations": False}
    validation = rec["metrics"]["validation"]
    assert validation["tolerance"] == 1e-4 and validation["max_abs_diff"] <= 1e-4
    assert rec["metrics"]["latency_ms"]["count"] >= 5
    # plugin API 2: the session's engine facts under metrics.backend, the backend's column in the record
    assert rec["metrics"]["backend"]["nodes"] > 0 and rec["metrics"]["backend"]["load_s"] >= 0
    assert {"key": "metrics.backend.load_s", "label": "onnxref load s"}.items() <= next(
        c for c in rec["columns"] if c["key"] == "metrics.backend.load_s"
    ).items()
    assert rec["backend"]["version"] == __import__("onnx").__version__  # from the probe's versions

    report = run_cli(str(tmp_path / "results"), "--out", str(tmp_path / "reports"), "--baseline", "", cwd=tmp_path, command="harness-report")
    assert report.returncode == 0, report.stdout + report.stderr
    assert "onnxref" in report.stdout
    assert any("onnxref" in p.read_text() for p in (tmp_path / "reports").glob("*.md"))


def test_checkout_loads_through_harness_plugins(checkout: dict[str, str], tmp_path: Path) -> None:
    proc = run_cli(cwd=tmp_path, command="harness-backends", env=checkout)
    assert proc.returncode == 0, proc.stderr
    row = _rows(proc.stdout)["onnxref"]
    # Where the example is also pip-installed (CI), its entry point loads the module first
    # and HARNESS_PLUGINS does not register it twice: the package column names the distribution.
    assert ("harness_plugin_example" in row or "harness-plugin-example" in row) and "yes" in row
    assert "warning" not in proc.stderr


def test_plugin_options_are_typed_by_its_dataclass(checkout: dict[str, str], tmp_path: Path) -> None:
    proc = run_cli("+scenario=bert_fp32", "backend=onnxref", "backend.verbose=9", *FAST, cwd=tmp_path, env=checkout)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "backend.verbose" in errors[0], proc.stderr
    assert not (tmp_path / "results").exists() or not records_in(tmp_path / "results")


def test_unknown_backend_lists_the_plugin_backend(checkout: dict[str, str], tmp_path: Path) -> None:
    proc = run_cli("backend=onnxrefx", cwd=tmp_path, env=checkout)
    assert proc.returncode == 2
    assert "onnxref" in proc.stderr and "onnxrefx" in proc.stderr


def test_example_own_test_suite_passes(tmp_path: Path) -> None:
    """The example's unit tests and its conformance-kit run, in the example's own pytest project."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout


# --- the docs' quick start, taken verbatim, must be a working plugin ----------------------

DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"

#: A stand-in for the vendor SDK the quick start imports (``import myaccel``): the same calls
#: (``device_count``, ``compile``, ``infer``), computed for real by ONNX Runtime on the CPU.
MYACCEL_SDK = """
import shutil

import onnxruntime

__version__ = "3.0.0"


def device_count():
    return 1


class Engine:
    def __init__(self, path):
        self.session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]

    def infer(self, inputs):
        return self.session.run(None, {name: inputs[name] for name in self.inputs})


def compile(path, device=0, save_to=None):
    if save_to is not None:  # the "engine": here a copy of the graph, which load() reads back
        shutil.copyfile(path, save_to)
    return Engine(path)


def load(plan):
    return Engine(str(plan))
"""


def quick_start_files(markdown: str) -> dict[str, str]:
    """``{path: content}`` for each bold file name of section 1 followed by a code block."""
    import re

    section = markdown.split("## 1. Quick start", 1)[1].split("\n## 2.", 1)[0]
    return {path: body for path, body in re.findall(r"\*\*`([^`]+)`\*\*.*?```\w*\n(.*?)```", section, flags=re.S)}


def test_docs_quick_start_is_a_working_plugin(tmp_path: Path) -> None:
    """Write the package exactly as docs/plugins.md section 1 shows it, build and install it,
    then run it through the CLI and the conformance kit."""
    files = quick_start_files(DOCS.read_text())
    assert set(files) == {
        "pyproject.toml",
        "src/harness_myaccel/__init__.py",
        "src/harness_myaccel/backend.py",
        "src/harness_myaccel/conf/backend/myaccel.yaml",
        "tests/test_conformance.py",
    }, sorted(files)
    package = tmp_path / "harness-myaccel"
    for path, body in files.items():
        (package / path).parent.mkdir(parents=True, exist_ok=True)
        (package / path).write_text(body)
    (package / "src/harness_myaccel/conf/__init__.py").write_text("")  # "(empty)" in the docs' tree
    sdk = tmp_path / "sdk"
    sdk.mkdir()
    (sdk / "myaccel.py").write_text(MYACCEL_SDK)

    subprocess.run([*PIP, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp_path / "dist"), str(package)], check=True)
    site = tmp_path / "site"
    (built,) = (tmp_path / "dist").glob("harness_myaccel-*.whl")
    subprocess.run([*PIP, "install", "--no-deps", "--no-index", "--target", str(site), str(built)], check=True)
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), str(sdk), os.environ.get("PYTHONPATH")])), "HARNESS_PLUGINS": ""}

    work = tmp_path / "work"
    work.mkdir()
    proc = run_cli("+scenario=bert_fp32", "backend=myaccel", *FAST, cwd=work, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (rec,) = records_in(work / "results")
    assert rec["status"] == "ok" and rec["backend"]["plugin"]["package"] == "harness-myaccel"

    kit = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", str(package / "tests")],
        cwd=package,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert kit.returncode == 0, kit.stdout[-4000:] + kit.stderr[-2000:]
    assert " passed" in kit.stdout and "failed" not in kit.stdout
