"""harness: measure how deep-learning models run across hardware backends.

The core (this package) owns configuration, the plugin manager, model sources,
the artifact pipeline (ONNX export, caching), measurement and records. Backends and
scenario kinds are plugins, registered through the ``harness`` entry-point group,
built-in ones included.
"""

__version__ = "0.1.0"
