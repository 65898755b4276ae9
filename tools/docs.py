"""The `--help` blocks docs/configuration.md shows, made by cog from the scripts themselves.

Regenerate them: uv run cog -I . -r docs/configuration.md     (tests/test_docs.py checks them)
"""

import os
import subprocess
import sys

WIDTH = "100"  # COLUMNS the blocks are made at


def help_block(*script: str) -> str:
    """The `--help` of a script (`python *script --help`: sample.py, enqueue.py, -m tools.bench)
    as a user's shell shows it at WIDTH columns with no DEMO_* variable set, in a fenced block."""
    clean = {n: v for n, v in os.environ.items() if not n.startswith(("DEMO_", "PYNENC__"))}
    argv, env = [sys.executable, *script, "--help"], {**clean, "COLUMNS": WIDTH}
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=True, timeout=60)
    return f"```\n{done.stdout.rstrip()}\n```\n"
