"""Peak memory in every record: the run process's ru_maxrss, beside a backend's own figures."""

from harness import memory


def test_the_run_peak_is_added_with_its_source():
    metrics: dict = {"latency_ms": {}}
    memory.add_run_peak(metrics, "process")
    assert metrics["memory_mib"]["peak_rss_mib"] > 10  # this test process holds at least the interpreter
    assert "isolated run process" in metrics["memory_source"]
    inline: dict = {}
    memory.add_run_peak(inline, "inline")
    assert "includes earlier work" in inline["memory_source"]


def test_a_backends_own_figures_stay_and_its_peak_rss_wins():
    metrics = {"memory_mib": {"peak_allocated_mib": 512.0}}
    memory.add_run_peak(metrics, "process")
    assert metrics["memory_mib"]["peak_allocated_mib"] == 512.0 and metrics["memory_mib"]["peak_rss_mib"] > 0
    rank0 = {"memory_mib": {"peak_rss_mib": 123.0}}  # a training session measured rank 0 itself
    memory.add_run_peak(rank0, "process")
    assert rank0 == {"memory_mib": {"peak_rss_mib": 123.0}}
