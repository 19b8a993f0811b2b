"""Benchmarks: each script runs the pack's path and the reference it replaces in one run.

Run from the repo root, e.g. ``python -m bench.compare --quick`` (``--help`` lists the options).
Checkpoints are the real architectures with synthetic weights (``bench/checkpoints.py``, built on
tools/synthetic_checkpoints.py, which the tests share).
"""
