"""Comparison reports over run records (the ``harness-report`` command).

Data flows one way: :mod:`harness.results` loads records into a flat DataFrame;
:mod:`.summary` aggregates repeats, computes speedups and Pareto fronts (pure
functions); :mod:`.build` turns that into a :class:`~.build.Report` of display
tables (:mod:`.tables`) and PNG figures (:mod:`.plots`); :mod:`.terminal`,
:mod:`.markdown`, :mod:`.html_page` and :mod:`.export` only lay it out;
:mod:`.cli` wires it to the command line.
"""
