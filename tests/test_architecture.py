"""The import graph has no circle and every import goes down the layers (docs/architecture.md).

The graph is read from the source (:mod:`import_graph`): imports inside functions and
under ``TYPE_CHECKING`` count, so a cycle cannot hide behind a lazy import. A new module
must be placed in a layer here (and in docs/architecture.md) before it is imported.
"""

from __future__ import annotations

import pytest

import import_graph

#: Bottom to top. A module may import modules of its own layer or of layers below. A
#: pattern names a module and everything under it (``harness`` itself: only the package's
#: ``__init__``); the longest matching pattern places it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "foundation",
        (
            "harness.errors",
            "harness.validation",
            "harness.identity",
            "harness.cache",
            "harness.records",
            "harness.stats",
            "harness.columns",
            "harness.ui",
            "harness.hardware",
            "harness.memory",
            "harness.timing",
            "harness.interrupts",
            "harness.fallback",
            "harness.hostlock",
            "harness.loadgen",
            "harness.results",
            "harness.slurm",
            "harness.stages",
        ),
    ),
    (
        "options and sources",
        (
            "harness.config",
            "harness.families",
            "harness.models",
            "harness.model_cards",
            "harness.data",
            "harness.training.options",
            "harness.training.plan",
            "harness.compression",
            "harness.compression.recipes",
            "harness.compression.calibration",
            "harness.generation",
            "harness.generation.decoders",
            "harness.generation.corpus",
            "harness.generation.tokenizer",
            "harness.serving",
            "harness.training",
        ),
    ),
    (
        "artifacts",
        (
            "harness.export",
            "harness.generation.onnx_export",
            "harness.compression.onnx_quant",
            "harness.compression.nncf_quant",
            "harness.compression.torch_quant",
            "harness.checkpoints",
            "harness.roofline",
            "harness.generation.quality",
        ),
    ),
    ("backend contract", ("harness.generation.session", "harness.backend")),
    (
        "stages",
        (
            "harness.compression.pipeline",
            "harness.compression.pruning",
            "harness.training.loop",
            "harness.training.job",
            "harness.training.torch_session",
            "harness.training.parallel",
            "harness.training.pipeline",
            "harness.training.strategies",
            "harness.training.accounting",
            "harness.training.architectures",
            "harness.training.optim",
            "harness.training.metrics",
            "harness.training.kd",
            "harness.training.ddp",
            "harness.training.objectives",
            "harness.measure",
            "harness.accuracy",
            "harness.generation.loop",
            "harness.generation.timing",
            "harness.serving.session",
            "harness.serving.load",
            "harness.serving.figures",
            "harness.serving.sweep",
            "harness.serving.sse",
            "harness.serving.timing",
            "harness.serving.gguf",
            "harness.serving.gguf_convert",
            "harness.serving.inprocess",
            "harness.serving.workload",
            "harness.serving.batching",
        ),
    ),
    ("scenario contract", ("harness.context", "harness.scenario")),
    ("plugin machinery", ("harness.registry", "harness.hookspecs", "harness.plugins", "harness.spec")),
    ("built-in plugins", ("harness.backends", "harness.scenarios")),
    (
        "orchestration",
        (
            "harness.autotrain",
            "harness.runner",
            "harness.launcher",
            "harness.sweep",
            "harness.preflight",
            "harness.training.ddp_worker",
        ),
    ),
    (
        "command line and reports",
        (
            "harness",
            "harness.compose",
            "harness.precheck",
            "harness.cli",
            "harness.backends_cli",
            "harness.testing",
            "harness.report",
            "harness.compare",
            "harness.tuning",
        ),
    ),
]


def layer_of(module: str) -> tuple[int, str] | None:
    """(index, name) of the layer whose longest pattern matches ``module``."""
    best: tuple[int, int, str] | None = None
    for index, (name, patterns) in enumerate(LAYERS):
        for pattern in patterns:
            if module == pattern or (pattern != "harness" and module.startswith(pattern + ".")):
                if best is None or len(pattern) > best[0]:
                    best = (len(pattern), index, name)
    return None if best is None else (best[1], best[2])


@pytest.fixture(scope="module")
def graph():
    return import_graph.build()


def test_no_import_cycles(graph):
    cycles = import_graph.cycles(graph)
    details = []
    for members in cycles:
        for importer in members:
            for imported in sorted(graph.find_modules_directly_imported_by(importer)):
                if imported in members:
                    lines = [d["line_number"] for d in graph.get_import_details(importer=importer, imported=imported)]
                    details.append(f"{importer} -> {imported} (line {lines})")
    assert not cycles, "import cycles:\n" + "\n".join(details)


def test_every_module_has_a_layer(graph):
    assert sorted(m for m in graph.modules if layer_of(m) is None) == []


def test_imports_only_go_down_the_layers(graph):
    upward = []
    for importer in sorted(graph.modules):
        low = layer_of(importer)
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            high = layer_of(imported)
            if low is not None and high is not None and high[0] > low[0]:
                lines = [d["line_number"] for d in graph.get_import_details(importer=importer, imported=imported)]
                upward.append(f"{importer} ({low[1]}) -> {imported} ({high[1]}), line {lines}")
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


def test_the_graph_sees_imports_inside_functions(graph):
    """The check would be blind to a lazy import otherwise."""
    assert graph.direct_import_exists(importer="harness.cli", imported="harness.launcher")
    assert "harness.backends.tensorrt.plan" in graph.modules and "harness.scenarios.training" in graph.modules
