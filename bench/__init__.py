"""The benchmarks (see ``BENCHMARKS.md``).

Each script runs as a script (``python bench/capacity.py``) and imports its siblings by their bare
names (``_common``, ``figures``). This file makes ``bench`` a package only so that the tests can
import what they share with the benchmarks: ``bench._common``.
"""
