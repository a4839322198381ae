"""Fault-injection backends and a quick scenario, for the reliability tests only.

Each backend fails in one way, at the stage ``backend.stage`` names (``probe``,
``prepare`` or ``run``; ``run`` faults on the third call, after measuring began):

=========  =====================================================================
backend    fault
=========  =====================================================================
numpy      none: a real (small) numpy matmul session, so sweeps have ok jobs
segfault   a genuine SIGSEGV: reads address 0 through ctypes
abort      SIGABRT, like a C++ runtime's uncaught exception
hang       deadlocks on a lock it already holds (no CPU use, never returns);
           ``backend.fault=orphan`` starts a ``sleep`` helper first (its pid is
           appended to ``backend.marker``), then waits forever; ``leak`` starts
           the helper and carries on (a run that finishes but leaves it behind)
oom        allocates 64 MiB blocks until MemoryError; refuses to start unless the
           run has an address-space limit (``launcher.memory_limit_mb``), so a
           test can never eat the machine
raises     raises RuntimeError
exits      calls ``os._exit(3)`` (a plugin that quits the process);
           ``backend.fault=env`` raises with the run's ``HF_HUB_OFFLINE`` and pid
flaky      ``backend.fault`` while the file ``backend.marker`` is missing (it
           creates it first, with its pid), then behaves like ``numpy``
=========  =====================================================================

``backend.fault=fill`` (with any backend) fills the filesystem that holds
``backend.marker`` with a ``<marker>.fill`` file, then carries on: the run measures,
and writing its record then meets a full disk.

``backend.fault`` overrides any of them. With ``+scenario=bert_fp32`` these backends
consume the torch module (eager) so the inference scenario runs unchanged; with
``+scenario=quick`` no model is built at all, which keeps sweep tests fast.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from harness import stats
from harness.backend import Artifact, Availability, Backend, Capabilities, Session
from harness.config import choice
from harness.hookspecs import hookimpl
from harness.measure import MeasurePlan, measure
from harness.scenario import RunContext, Scenario, ScenarioResult
from harness.scenarios.inference import InferenceOptions

FAULTS = ("none", "segfault", "abort", "hang", "orphan", "leak", "oom", "raise", "exit", "env", "fill")
STAGES = ("probe", "prepare", "run")
CONF = Path(__file__).parent / "conf"


@dataclass
class FaultOptions:
    """``backend.*`` keys of every fault backend."""

    fault: str = "none"
    stage: str = "prepare"
    marker: Optional[str] = None
    size: int = 64

    def __post_init__(self) -> None:
        choice(self.fault, FAULTS, "fault")
        choice(self.stage, STAGES, "stage")


def inject(options: FaultOptions, stage: str) -> None:
    """Misbehave as ``options`` say if ``stage`` is the configured one."""
    if options.fault == "none" or stage != options.stage:
        return
    if options.marker:
        marker = Path(options.marker)
        if marker.exists():
            return
        marker.write_text(str(os.getpid()))
    if options.fault == "segfault":
        ctypes.string_at(0)
        os.kill(os.getpid(), signal.SIGSEGV)  # in case address 0 was readable
    elif options.fault == "abort":
        os.abort()
    elif options.fault == "hang":
        lock = threading.Lock()
        lock.acquire()
        lock.acquire()  # deadlock: blocks forever without using the CPU
    elif options.fault in ("orphan", "leak"):
        helper = subprocess.Popen(["sleep", "600"])  # stays in the run's process group
        with open(options.marker or os.devnull, "a") as handle:
            handle.write(f" {helper.pid}")
        if options.fault == "orphan":
            threading.Event().wait()
    elif options.fault == "oom":
        if resource.getrlimit(resource.RLIMIT_AS)[0] == resource.RLIM_INFINITY:
            raise RuntimeError("the oom fault needs an address-space limit: set launcher.memory_limit_mb")
        hoard = []
        while True:
            hoard.append(bytearray(64 * 2**20))
    elif options.fault == "raise":
        raise RuntimeError(f"injected failure in {stage}")
    elif options.fault == "exit":
        os._exit(3)
    elif options.fault == "fill":
        try:
            with open(f"{options.marker}.fill", "ab") as handle:
                while True:
                    handle.write(b"\0" * 2**20)
                    handle.flush()
        except OSError:
            pass  # the disk is full now
    elif options.fault == "env":
        raise RuntimeError(f"HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE')} pid={os.getpid()}")


class FaultySession(Session):
    """Runs the torch module (inference scenario) or a numpy matmul (quick scenario)."""

    def __init__(self, options: FaultOptions, artifact: Artifact) -> None:
        self.options = options
        self.module = artifact.module
        self.output_names = artifact.output_names
        self.calls = 0

    def load(self, batch: Any) -> Any:
        if self.module is None:
            return dict(batch)
        import torch

        return {name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in batch.items()}

    def run(self, inputs: Any) -> Any:
        self.calls += 1
        if self.calls == 3:
            inject(self.options, "run")
        if self.module is None:
            return inputs["a"] @ inputs["a"]
        import torch

        with torch.inference_mode():
            return self.module(**inputs)

    def fetch(self, outputs: Any) -> dict[str, np.ndarray]:
        array = outputs if isinstance(outputs, np.ndarray) else outputs.float().numpy()
        return {self.output_names[0]: array}


class FaultyBackend(Backend):
    """Base of the fault backends; the subclasses only differ in name and default fault."""

    name = "faulty"
    options_type = FaultOptions

    @classmethod
    def probe(cls, options: FaultOptions) -> Availability:
        inject(options, "probe")
        return Availability(True, devices=("cpu",), versions={cls.name: "test"})

    def capabilities(self) -> Capabilities:
        return Capabilities(precisions=frozenset({"fp32"}), consumes=("torch",), tolerance={"fp32": 1e-4})

    def prepare(self, artifact: Artifact, precision: str) -> Session:
        self.check_precision(precision)
        inject(self.options, "prepare")
        return FaultySession(self.options, artifact)

    def version(self) -> str:
        return "test"


def _backend(name: str) -> type[FaultyBackend]:
    return type(f"{name.title()}Backend", (FaultyBackend,), {"name": name, "__module__": __name__})


BACKENDS = [_backend(n) for n in ("numpy", "segfault", "abort", "hang", "oom", "raises", "exits", "flaky")]


@dataclass
class QuickOptions(InferenceOptions):
    """The inference keys (the primary config's inline scenario has them) plus a matrix size."""

    size: int = 64


class QuickScenario(Scenario):
    """Times ``a @ a`` through a backend session: the plumbing of a run without a model."""

    kind = "quick"
    options_type = QuickOptions

    def run(self, ctx: RunContext) -> ScenarioResult:
        opts: QuickOptions = self.options
        ctx.backend.check_precision(opts.precision)
        ctx.status(f"preparing {ctx.backend.name} session")
        session = ctx.backend.prepare(Artifact("matmul", ("a",), ("out",)), opts.precision)
        inputs = session.load({"a": np.random.default_rng(0).standard_normal((opts.size, opts.size))})
        ctx.status("measuring")
        plan = MeasurePlan(opts.warmup_iters, opts.min_iters, opts.min_duration_s, opts.max_duration_s)
        samples = measure(session, inputs, plan).samples_ms
        metrics = {
            "latency_ms": stats.summarize(samples).as_dict(),
            "throughput": {"samples_per_s": stats.samples_per_second(1, samples), "tokens_per_s": None},
        }
        return ScenarioResult(precision=opts.precision, metrics=metrics, batch_size=1, seq_len=None)


@hookimpl
def harness_register_backends(registry: Any) -> None:
    for backend in BACKENDS:
        registry.add_backend(backend)


@hookimpl
def harness_register_scenarios(registry: Any) -> None:
    registry.add_scenario(QuickScenario)


@hookimpl
def harness_config_searchpath() -> list[str]:
    return [f"file://{CONF}"]
