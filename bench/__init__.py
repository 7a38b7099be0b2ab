"""Fleet benchmarks: the fleet simulator and the scripts behind ``docs/performance.md``.

Every script runs with one command from the repository root, e.g.
``python -m bench.fleetsim --spawn-manager --nodes 1000 --duration 60``, prints a small
table and, with ``--json``, machine-readable figures. They are scripts, not timed tests;
``tests/test_bench_guard.py`` is the small regression guard that CI runs.
"""
