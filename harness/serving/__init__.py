"""LLM serving under load: workloads, arrival processes, streamed sessions, figures.

- :mod:`~harness.serving.session`: the streaming async session API engines implement;
- :mod:`~harness.serving.workload`: seeded prompts and output lengths;
- :mod:`~harness.serving.load`: the asyncio load generator (Poisson, constant, concurrency);
- :mod:`~harness.serving.timing` / :mod:`~harness.serving.figures`: per-request TTFT,
  TPOT, ITL, e2e; per-step throughput, goodput and the p99 verdict;
- :mod:`~harness.serving.sweep`: guidellm-style sweeps and the SLO rate search;
- :mod:`~harness.serving.sse`: the incremental Server-Sent Events parser.

The ``serving`` scenario kind (``scenarios/serving.py``) orders these; docs/serving.md
explains the definitions and how to measure a server.
"""
