"""Text generation with decoder LLMs: the session contract, timing formulas, the
embedded corpus and tokenizer, decoder model sources and quality (perplexity).

The ``generation`` scenario kind (``scenarios/generation.py``) orders these pieces;
backends implement :class:`harness.generation.session.GenerationSession` through
``Backend.prepare_generation``. See docs/llm.md.
"""
