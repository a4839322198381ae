"""harness: measure how deep-learning models run across hardware backends.

The core (this package) owns configuration, the plugin manager, model sources,
the artifact pipeline (ONNX export, caching), measurement and records. Backends and
scenario kinds are plugins, registered through the ``harness`` entry-point group,
built-in ones included.
"""

import os
from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """``from harness import hookimpl``: the plugin marker, imported on first use so that
    ``import harness`` stays cheap."""
    if name == "hookimpl":
        from harness.hookspecs import hookimpl

        return hookimpl
    raise AttributeError(f"module 'harness' has no attribute {name!r}")


# No network at run time: onnxruntime >= 1.32 on Linux queues telemetry events in
# ~/.cache/Microsoft/DeveloperTools/.onnxruntime/ and uploads them (a DNS lookup of
# mobile.events.data.microsoft.com) from a background thread; ``disable_telemetry_events()``
# does not stop it, this variable does when it is set before onnxruntime loads. Set
# here, at the first import of harness, so every process (CLI, run process, torchrun
# workers, tests) has it; a user who sets it to 0 keeps their choice.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
