"""Peak host memory of a run, for every backend, at no cost during the measurement.

The figure is the kernel's high-water mark of the run process's resident set
(``getrusage(RUSAGE_SELF).ru_maxrss``), read once when the run ends. It covers the
whole run (model build, export, session, measurement, accuracy scoring), which is
what decides whether a configuration fits a machine. It costs nothing while timing:
no sampler thread competes with the measured code for the cores or the GIL.

Where it is honest and where it is not:

- ``launcher.isolation=process`` (the default): the run has a fresh spawned process,
  so the peak is this run's alone.
- ``launcher.isolation=inline``: the process is the CLI's own, so the peak also
  includes whatever ran before in it (earlier jobs of an inline sweep); the record's
  ``metrics.memory_source`` says so.
- A backend that measures memory itself (CUDA's ``max_memory_allocated``, a training
  session's rank 0) keeps its own figures in ``metrics.memory_mib``; the run's peak
  RSS is added beside them unless the backend already gave one.
"""

from __future__ import annotations

import sys
from typing import Any

SOURCE = {
    "process": "ru_maxrss of the isolated run process (whole run: build, export, measurement)",
    "inline": "ru_maxrss of the harness process (isolation=inline: includes earlier work in that process)",
    "worker": "ru_maxrss of the reused run process (launcher.reuse_worker=true: includes the sweep's earlier jobs in it)",
}


def peak_rss_mib() -> float | None:
    """This process's peak resident set in MiB (None where ``resource`` is missing)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def add_run_peak(metrics: dict[str, Any], isolation: str) -> None:
    """Put the run's peak RSS into ``metrics.memory_mib.peak_rss_mib`` unless a backend gave one."""
    figures = metrics.get("memory_mib")
    if figures is None:
        figures = metrics["memory_mib"] = {}
    if not isinstance(figures, dict) or figures.get("peak_rss_mib") is not None:
        return
    peak = peak_rss_mib()
    if peak is None:
        return
    figures["peak_rss_mib"] = round(peak, 1)
    metrics["memory_source"] = SOURCE.get(isolation, SOURCE["process"])
