"""Test-only harness plugins that misbehave on purpose (never installed, never shipped).

Load them with ``HARNESS_PLUGINS=faultplugins.faulty`` and ``tests/`` on ``PYTHONPATH``.
"""
