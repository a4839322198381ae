"""harness: measure how deep-learning models run across hardware backends.

The core (this package) owns configuration, the plugin manager, model sources,
the artifact pipeline (ONNX export, caching), measurement and records. Backends and
scenario kinds are plugins, registered through the ``harness`` entry-point group,
built-in ones included.
"""

import os

__version__ = "0.1.0"

# No network at run time: onnxruntime >= 1.32 on Linux queues telemetry events in
# ~/.cache/Microsoft/DeveloperTools/.onnxruntime/ and uploads them (a DNS lookup of
# mobile.events.data.microsoft.com) from a background thread; ``disable_telemetry_events()``
# does not stop it, this variable does when it is set before onnxruntime loads. Set
# here, at the first import of harness, so every process (CLI, run process, torchrun
# workers, tests) has it; a user who sets it to 0 keeps their choice.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
