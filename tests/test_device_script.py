"""scripts/device-check.sh and scripts/build-device-wheels.sh, checked without a GPU.

The GPU runs themselves happen on a borrowed machine; here we check what can go wrong
before one is borrowed: shell syntax (and shellcheck where installed), the plan the dry
run prints (every run's overrides compose into a valid RunSpec, the records go to
results/reference/<label>/ with that hardware label), the refusal without a GPU, and
the install path the device uses (harness wheel into a --target folder, sources copied
over it, plugins found through the wheel's entry points).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "device-check.sh"
WHEELS = REPO / "scripts" / "build-device-wheels.sh"


def _gpu_here() -> bool:
    import torch

    return torch.cuda.is_available() or shutil.which("nvidia-smi") is not None


def _run(*args: str, env: dict[str, str] | None = None, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("script", [SCRIPT, WHEELS], ids=lambda p: p.name)
def test_shell_syntax(script):
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed (apt-get install shellcheck)")
@pytest.mark.parametrize("script", [SCRIPT, WHEELS], ids=lambda p: p.name)
def test_shellcheck_is_clean(script):
    proc = subprocess.run(["shellcheck", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def _plan(label: str) -> tuple[str, list[tuple[str, list[str]]], str]:
    proc = _run("--dry-run", "--label", label)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = []
    for line in proc.stdout.splitlines():
        match = re.match(r"PLAN (\S+) (\d+)s :: (.*)$", line)
        if match:
            runs.append((match.group(1), shlex.split(match.group(3))))
    reports = [line for line in proc.stdout.splitlines() if line.startswith("REPORT :: ")]
    assert len(reports) == 1, proc.stdout
    return proc.stdout, runs, reports[0]


def test_dry_run_plans_the_required_runs_into_the_reference_folder():
    out, runs, report = _plan("test-box")
    names = [name for name, _ in runs]
    for required in ("cuda-fp32", "cuda-bf16", "cuda-fp16", "cuda-compile", "train-bf16"):
        assert required in names, out
    assert names.index("cuda-fp32") == 0, "fp32 first: it is the baseline of every comparison"
    for name, args in runs:
        assert f"results_dir={REPO}/results/reference/test-box" in args, (name, args)
        assert "hardware.label=test-box" in args, (name, args)
    precisions = {a.split("=", 1)[1] for _, args in runs for a in args if a.startswith("scenario.precision=")}
    assert {"bf16", "fp16", "tf32"} <= precisions
    assert any("backend.compile=true" in args for _, args in runs)
    assert f"{REPO}/results/reference" in report and "harness.report.cli" in report
    if not _gpu_here():
        assert "GPU: none visible" in out


def test_every_planned_run_composes_into_a_valid_spec():
    """A typo in an override would only surface on the borrowed GPU; compose them here."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from harness.compose import normalise
    from harness.spec import build_spec
    from harness.plugins import load_plugins

    registry = load_plugins().registry
    _, runs, _ = _plan("compose-check")
    for name, args in runs:
        if any(a == "backend=tensorrt" for a in args) and "tensorrt" not in registry.backends:
            continue
        GlobalHydra.instance().clear()
        with initialize_config_module(config_module="harness.conf", version_base="1.3"):
            cfg = compose(config_name="config", overrides=normalise(args))  # the card's +scenario=, as the CLI reads it
        spec = build_spec(cfg, registry)
        assert spec.hardware.label == "compose-check", name
        assert str(spec.results_dir).endswith("results/reference/compose-check"), name
    GlobalHydra.instance().clear()


@pytest.mark.skipif(_gpu_here(), reason="a GPU is visible here: the script would run for real")
def test_real_run_without_a_gpu_stops_with_the_reason():
    proc = _run("--label", "nowhere")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "no NVIDIA GPU visible" in proc.stderr
    assert not (REPO / "results" / "reference" / "nowhere").exists()


@pytest.mark.parametrize("args, needle", [(["--nope"], "unknown argument '--nope'"), (["--budget", "soon"], "--budget"), (["--label", "a b"], "--label")])
def test_bad_arguments_exit_2_with_one_line(args, needle):
    proc = _run(*args)
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr


@pytest.mark.slow
def test_setup_installs_the_harness_wheel_and_finds_the_plugins(tmp_path):
    """The device's path: harness wheel -> --target folder, sources over it, entry points from it."""
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    site = tmp_path / "site"
    proc = _run("--setup-only", "--wheels", str(wheels), "--site", str(site), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"harness from {site}/harness/__init__.py" in proc.stdout, proc.stdout
    assert (site / "harness" / "backends" / "torch_xla.py").read_bytes() == (REPO / "backends" / "torch_xla.py").read_bytes()
    rows = {line.split("│")[1].strip(): line for line in proc.stdout.splitlines() if line.startswith("│") and line.split("│")[1].strip()}
    assert "yes" in rows["pytorch"], proc.stdout
