"""The pieces a :class:`~harness.report.build.Report` is made of, shared by the modules that build them."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd


@dataclass(frozen=True)
class Plot:
    """A rendered plot: ``name`` is a file stem unique within the report."""

    name: str
    title: str
    png: bytes


@dataclass
class Section:
    """One model × scenario: its table and figures; ``topic`` heads sections that are not the
    main comparison (e.g. ``Serving under load``)."""

    model: str
    scenario: str
    table: pd.DataFrame
    figures: list[Plot] = field(default_factory=list)
    topic: str = ""

    @property
    def title(self) -> str:
        return f"{self.topic} — {self.model} · {self.scenario}" if self.topic else f"{self.model} · {self.scenario}"
