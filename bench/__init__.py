"""Benchmarks: each script runs the pack's path and the reference it replaces in one run.

Run from the repo root, e.g. ``python -m bench.run_all --quick``; see bench/README.md.
"""
