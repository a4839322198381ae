"""The summary table printed at the end of a run (harness.ui.record_table)."""

from __future__ import annotations

from rich.console import Console

from harness import ui


def record(kind_metrics: dict, scenario: str = "bert_fp32") -> dict:
    return {"status": "ok", "backend": {"name": "onnxruntime"}, "scenario": {"name": scenario, "precision": "fp32", "batch_size": 1}, "metrics": kind_metrics}


def rendered(records: list[dict]) -> str:
    console = Console(width=250, record=True)
    console.print(ui.record_table(records))
    return console.export_text()


def test_an_inference_run_shows_every_fixed_column():
    text = rendered(
        [
            record(
                {
                    "latency_ms": {"p50": 1.5, "p99": 2.5},
                    "throughput": {"samples_per_s": 600.0},
                    "accuracy": {"metric": "accuracy", "value": 0.91},
                    "memory_mib": {"peak_rss_mib": 500},
                    "mfu": 0.25,
                }
            )
        ]
    )
    for name in ("p50 ms", "p99 ms", "samples/s", "accuracy", "peak MiB", "MFU", "1.500", "0.9100", "25.0%"):
        assert name in text


def test_figures_no_record_has_are_left_out_and_perplexity_is_named():
    """A generation run has no per-call latency or MFU: no columns of dashes; its quality is a
    perplexity (lower is better), so the column says so instead of "accuracy"."""
    text = rendered(
        [
            record(
                {"throughput": {"samples_per_s": 0.6}, "accuracy": {"metric": "perplexity", "value": 1182.5}, "memory_mib": {"peak_rss_mib": 1044}},
                scenario="llm_fp32",
            )
        ]
    )
    assert "p50 ms" not in text and "p99 ms" not in text and "MFU" not in text
    assert "perplexity" in text and "accuracy" not in text and "1,182.5000" in text and "samples/s" in text


def test_mixed_metrics_keep_the_generic_name():
    text = rendered([record({"accuracy": {"metric": "perplexity", "value": 3.0}}), record({"accuracy": {"metric": "accuracy", "value": 0.5}})])
    assert "accuracy" in text and "perplexity" not in text
