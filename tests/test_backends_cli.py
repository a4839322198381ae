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


def test_composed_options_are_cached_until_a_backend_file_changes(tmp_path: Path, monkeypatch) -> None:
    """Composing every option costs more than the rest of the command; the listing is kept
    under a key of the backend files, so a new or edited file is composed again."""
    from harness import backends_cli

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    plugin = tmp_path / "plugin_conf"
    (plugin / "backend").mkdir(parents=True)
    (plugin / "backend" / "mine.yaml").write_text("name: mine\nthreads: 1\n")
    searchpath = [f"file://{plugin}"]
    first = backends_cli.choices(searchpath, ["mine"])
    assert next(c for c in first if c.config == "mine").options == {"threads": 1}

    def no_compose(_searchpath):
        raise AssertionError("composed again")

    monkeypatch.setattr(backends_cli, "_compose_each", no_compose)
    assert backends_cli.choices(searchpath, ["mine"]) == first
    (plugin / "backend" / "mine.yaml").write_text("name: mine\nthreads: 2\n")
    monkeypatch.undo()
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    assert next(c for c in backends_cli.choices(searchpath, ["mine"]) if c.config == "mine").options == {"threads": 2}
