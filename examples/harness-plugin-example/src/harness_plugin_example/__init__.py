"""harness-plugin-example: an ``onnxref`` backend that runs ONNX with ``onnx.reference``.

This module is the plugin: the ``harness`` entry point in ``pyproject.toml`` names it,
and harness's plugin manager calls the ``@hookimpl`` functions below. The backend
itself lives in :mod:`harness_plugin_example.backend`.
"""

from __future__ import annotations

from typing import Any

from harness import hookimpl

__version__ = "0.1.0"

#: The harness plugin-API major version this plugin was written for; a harness with
#: another major refuses to load it, with a warning naming this plugin.
HARNESS_PLUGIN_API = "2"


@hookimpl
def harness_register_backends(registry: Any) -> None:
    from harness_plugin_example.backend import OnnxRefBackend

    registry.add_backend(OnnxRefBackend)


@hookimpl
def harness_config_searchpath() -> list[str]:
    # conf/backend/onnxref.yaml inside this package makes `backend=onnxref` resolve.
    return ["pkg://harness_plugin_example.conf"]
