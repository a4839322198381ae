"""The Scenario contract and the context the runner hands to every scenario.

A scenario (inference, compressed inference, training, distillation...) turns a
backend plus a model and data into metrics. It talks to backends only through the
Backend/Session contract and reaches the core's services (model sources, datasets,
the artifact pipeline) through :class:`RunContext`, so no scenario imports a
concrete backend and no backend parses config.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar

from harness.columns import Column
from harness.context import RunContext

__all__ = ["RunContext", "Scenario", "ScenarioResult"]


@dataclass
class ScenarioResult:
    """What a scenario measured, ready to be merged into the record."""

    precision: str
    metrics: dict[str, Any]
    batch_size: int | None = None
    seq_len: int | None = None
    model: dict[str, Any] = field(default_factory=dict)
    backend: dict[str, Any] = field(default_factory=dict)


class Scenario(abc.ABC):
    """A scenario kind, selected by ``scenario.kind``.

    A kind *declares* what the core needs to know about it; the core (spec, runner,
    launcher, sweeps, reports) reads these declarations and never the kind's options:

    ``options_type``
        the dataclass the ``scenario.*`` keys are validated against (the kind's YAML
        files list every key; nothing is inherited from another kind).
    ``run_local_keys``
        ``scenario.*`` keys (dotted, without ``scenario.``) that say where or how one run
        happens, never what it measures; they never separate two jobs (sweep resume,
        report rows). The record carries them, so a report needs no plugin.
    ``record_section``
        the ``metrics.<section>`` only this kind writes (None: the common sections only).
    ``report_columns``
        the kind's own figures for the terminal table and reports, copied into each record.
    ``checkpoint_options``
        option names whose value may be ``auto`` (the family recipe's trained
        checkpoint); the runner's checkpoint stage resolves them before :meth:`run`.
    :meth:`nodes`, :meth:`lock_group`
        whether a run spans several ``harness`` processes (one per node) and the name
        those processes share the host measurement lock under.
    :meth:`summary`
        how the options summarise into the record's ``scenario`` section.
    """

    kind: ClassVar[str]
    options_type: ClassVar[type]
    run_local_keys: ClassVar[tuple[str, ...]] = ()
    record_section: ClassVar[str | None] = None
    report_columns: ClassVar[tuple[Column, ...]] = ()
    checkpoint_options: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def nodes(cls, options: Any) -> tuple[int, int]:
        """``(node_rank, nnodes)``: a run made of one ``harness`` per node says which one this
        is; ``(0, 1)`` (the default) for a run in one process tree."""
        return (0, 1)

    @classmethod
    def lock_group(cls, options: Any) -> str | None:
        """A name the processes of one multi-node run share (they may land on one host and
        must share its measurement lock); None for everything else."""
        return None

    @classmethod
    def summary(cls, options: Any) -> dict[str, Any]:
        """The record's ``scenario`` section before the run (``precision``, ``batch_size``,
        ``seq_len``); the result's own figures replace it once the run measured. The
        default reads options of those names, so a kind with other names overrides it."""
        return {
            "precision": str(getattr(options, "precision", "fp32")),
            "batch_size": getattr(options, "batch_size", None),
            "seq_len": getattr(options, "seq_len", None),
        }

    def __init__(self, options: Any) -> None:
        self.options = options

    @abc.abstractmethod
    def run(self, ctx: RunContext) -> ScenarioResult:
        """Measure and return metrics. Raise a :class:`harness.errors.HarnessError` to
        end the run with its status (``unsupported``, ``mismatch``...) and reason."""
