"""The tools that measure the demo (python -m tools.bench, .stress, .faults, .snapshot)."""
