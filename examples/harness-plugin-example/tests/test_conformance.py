"""The harness conformance kit, run against this plugin's backend: the same checks every
built-in backend passes (probe, capabilities, outputs within tolerance of eager fp32,
reusable sessions, clean refusals, a schema-valid record from a full run)."""

from harness.testing import BackendConformance


class TestOnnxRef(BackendConformance):
    backend = "onnxref"
