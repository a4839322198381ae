"""The report's generation section and the generation kind's declared columns.

Hand-made generation records (two backends, fp32 at two batch sizes and two prompt
lengths, weight-only int4) must give: the kind's columns in the comparison table, the four
generation figures (tokens/s vs batch, TTFT vs prompt length, ITL distribution,
compression Pareto), and no perplexity in the higher-is-better accuracy chart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness import records, results
from harness.report import build, markdown
from harness.scenarios.generation import GenerationScenario
from test_results import make_record


def generation_record(
    backend: str, precision: str, batch: int, prompt: int, decode: float, ttft: float, relative: float, checkpoint: str | None = None
) -> dict[str, Any]:
    rec = make_record(
        model="llama_tiny",
        scenario=f"llm_{precision}",
        kind="generation",
        precision=precision,
        backend=backend,
        batch_size=batch,
        seq_len=prompt,
        throughput=decode / 64,
    )
    del rec["metrics"]["latency_ms"]  # generation runs time tokens, not calls
    summary = {"p50": ttft, "p90": ttft, "p99": ttft * 1.2, "mean": ttft, "count": 5}
    rec["metrics"]["generation"] = {
        "ttft_ms": summary,
        "tpot_ms": {**summary, "p50": 1000 / decode},
        "itl_ms": {**summary, "p50": 1000 / decode, "samples": [1000 / decode * f for f in (0.9, 1.0, 1.1, 1.3)]},
        "e2e_ms": summary,
        "decode_tokens_per_s": decode,
        "output_tokens_per_s": decode * 0.9,
    }
    rec["metrics"]["accuracy"] = {
        "metric": "perplexity",
        "value": 3.0 / relative,
        "reference": 3.0,
        "relative": relative,
        "agreement": 1.0 if precision == "fp32" else 0.9,
    }
    if precision == "int4":
        rec["metrics"]["compression"] = {"size_bytes": 30, "fp32_size_bytes": 100, "size_ratio": 0.3}
    rec["config"] = {
        "backend": {"name": backend},
        "model": {"name": "llama_tiny", "checkpoint": checkpoint},
        "scenario": {"name": f"llm_{precision}", "batch_size": batch, "prompt_len": prompt},
    }
    rec["columns"] = [column.as_dict() for column in GenerationScenario.report_columns]
    records.validate(rec)
    return rec


def test_generation_section_and_columns(tmp_path: Path) -> None:
    for backend, speed in (("onnxruntime", 40.0), ("openvino", 30.0)):
        for batch in (1, 4):
            records.write(generation_record(backend, "fp32", batch, 128, speed * batch**0.5, 200.0, 1.0), tmp_path)
        records.write(generation_record(backend, "fp32", 1, 512, speed, 700.0, 1.0), tmp_path)
        records.write(generation_record(backend, "int4", 1, 128, speed * 1.8, 150.0, 0.97), tmp_path)
    report = build.build(results.load(tmp_path), baseline=None)
    names = [figure.name for figure in report.generation]
    assert any(n.startswith("tokens-vs-batch") for n in names) and any(n.startswith("ttft-vs-prompt") for n in names)
    assert any(n.startswith("itl") for n in names) and any(n.startswith("pareto") for n in names)
    assert all(figure.png.startswith(b"\x89PNG") for figure in report.generation)
    assert not report.accuracy  # perplexity is lower-is-better: only the generation Pareto shows it
    table = next(section.table for section in report.sections if section.scenario == "llm_int4")
    for label in ("TTFT p50 (ms)", "Decode tok/s", "Greedy agreement", "Size vs fp32"):
        assert label in table.columns, table.columns
    text = markdown.render(report)
    assert "## Generation" in text and "Compression Pareto" in text
    written = markdown.write(report, tmp_path / "out")
    assert sum(path.suffix == ".png" for path in written) >= len(report.generation)


def test_pareto_never_mixes_random_and_trained_weights(tmp_path: Path) -> None:
    """Perplexity ratios of random-init and trained weights are different trade-offs: one
    Pareto per ``model.checkpoint``, each holding only its own runs."""
    for checkpoint, relative in ((None, 0.999), ("auto", 0.97)):
        records.write(generation_record("openvino", "fp32", 1, 128, 30.0, 200.0, 1.0, checkpoint), tmp_path)
        records.write(generation_record("openvino", "int4", 1, 128, 60.0, 150.0, relative, checkpoint), tmp_path)
    report = build.build(results.load(tmp_path), baseline=None)
    paretos = [figure for figure in report.generation if figure.name.startswith("pareto")]
    assert len(paretos) == 2, [figure.name for figure in report.generation]
    assert len({figure.name for figure in paretos}) == 2
    assert {figure.title.rsplit("model.checkpoint=", 1)[-1] for figure in paretos} == {"auto", "null"}
