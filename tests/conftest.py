"""Shared fixtures: an isolated artifact cache, tiny models, and the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
FAST = ["model=bert_tiny", "scenario.seq_len=32", "scenario.warmup_iters=2", "scenario.min_iters=5", "scenario.min_duration_s=0.2"]


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test shares one fresh artifact cache, never the user's."""
    root = tmp_path_factory.mktemp("harness-cache")
    os.environ["HARNESS_CACHE"] = str(root)
    os.environ["HF_HUB_OFFLINE"] = "1"
    # A private host lock, so the suite never queues behind a real measurement on this machine.
    os.environ["HARNESS_LOCK_DIR"] = str(tmp_path_factory.mktemp("locks"))
    return root


def start_cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """Start ``harness`` in the background, as a terminal would: Ctrl-C (SIGINT) reaches it.

    A shell starts background commands with SIGINT ignored, and an ignored signal stays
    ignored in the processes they start (Python then installs no KeyboardInterrupt
    handler); so a test suite run from ``cmd &`` or a CI runner would send its SIGINT to a
    harness that cannot see it. The child gets the default disposition back.
    """
    return subprocess.Popen(
        [str(BIN / "harness"), *args],
        cwd=cwd,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def run_cli(*args: str, cwd: Path, command: str = "harness", env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    """Run an installed console script the way a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([str(BIN / command), *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def run_two_nodes(*args: str, cwd: Path, timeout: int = 400) -> tuple[subprocess.CompletedProcess[str], tuple[int, str, str]]:
    """Nodes 0 and 1 of one multi-node run as two ``harness`` processes on this host:
    node 1 in the background, node 0 through :func:`run_cli`; ``args`` carry nnodes=2 and
    the rendezvous. Returns node 0's process and node 1's ``(returncode, stdout, stderr)``."""
    node1 = subprocess.Popen(
        [str(BIN / "harness"), *args, "scenario.distributed.node_rank=1"],
        cwd=cwd,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        node0 = run_cli(*args, "scenario.distributed.node_rank=0", cwd=cwd, timeout=timeout)
        out1, err1 = node1.communicate(timeout=120)
    finally:
        node1.kill()
    return node0, (node1.returncode, out1, err1)


def records_in(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


@pytest.fixture(scope="session")
def tiny_model():
    from harness.models import ModelOptions, load_model

    options = ModelOptions(
        name="bert_tiny",
        config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=30522),
    )
    return load_model(options)


@pytest.fixture(scope="session")
def tiny_batch():
    import numpy as np

    rng = np.random.default_rng(0)
    ids = rng.integers(5, 1000, size=(3, 16)).astype(np.int64)
    mask = np.ones_like(ids)
    mask[0, 12:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="session")
def llama_source():
    """``model=llama_tiny`` (its YAML config, random init) as the DecoderSource backends prepare."""
    from importlib import resources

    import yaml

    from harness.generation.session import DecoderSource
    from harness.generation.tokenizer import corpus_tokenizer
    from harness.models import ModelOptions, load_model

    spec = yaml.safe_load((resources.files("harness.conf") / "model" / "llama_tiny.yaml").read_text())
    model = load_model(ModelOptions(name=spec["name"], family=spec["family"], config=spec["config"]))
    return DecoderSource(model.name, model.module, model.config, corpus_tokenizer(), model.params, model.weights_digest(), status=lambda message: None)
