"""The tools that measure the demo: the benchmark, the fault harness and the README picture.

Each runs as a module from the top of the project: uv run python -m tools.bench (faults,
snapshot); they run on the same harness as sample.py (demo/) and are not part of it.
"""
