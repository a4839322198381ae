"""``harness-backends``: --help works, and each config variant is probed with its own options."""

from __future__ import annotations

from pathlib import Path

from conftest import run_cli


def test_help_explains_the_command_and_exits_0(tmp_path: Path) -> None:
    proc = run_cli("--help", cwd=tmp_path, command="harness-backends")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: harness-backends") and "backend=<config>" in proc.stdout


def test_a_variant_is_listed_by_its_config_name_and_probed_with_its_options(tmp_path: Path) -> None:
    proc = run_cli(cwd=tmp_path, command="harness-backends")
    assert proc.returncode == 0, proc.stderr
    rows = {line.split("│")[1].strip(): line for line in proc.stdout.splitlines() if line.startswith("│")}
    assert "yes" in rows["pytorch"]
    # pytorch_cuda is the pytorch plugin with device=cuda: on a machine without CUDA it is not available
    cuda = rows["pytorch_cuda (pytorch)"]
    assert ("no" in cuda and "CUDA" in cuda) or "yes" in cuda
