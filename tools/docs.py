"""The `--help` blocks docs/configuration.md shows, made by cog from the scripts themselves.

Regenerate them: uv run cog -I . -r docs/configuration.md     (tests/test_docs.py checks them)
"""

import functools
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

WIDTH = "100"  # COLUMNS the blocks are made at
# The scripts the page shows, each run once, side by side, as the first block is made.
SCRIPTS = (("sample.py",), ("enqueue.py",), ("-m", "tools.bench"))


def help_block(*script: str) -> str:
    """The `--help` of a script (`python *script --help`: sample.py, enqueue.py, -m tools.bench)
    as a user's shell shows it at WIDTH columns with no DEMO_* variable set, in a fenced block."""
    return f"```\n{helps()[script].rstrip()}\n```\n"


@functools.cache
def helps() -> dict[tuple[str, ...], str]:
    clean = {n: v for n, v in os.environ.items() if not n.startswith(("DEMO_", "PYNENC__"))}

    def run(script: tuple[str, ...]) -> str:
        argv, env = [sys.executable, *script, "--help"], {**clean, "COLUMNS": WIDTH}
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=True, timeout=60)
        return done.stdout

    with ThreadPoolExecutor(len(SCRIPTS)) as pool:
        return dict(zip(SCRIPTS, pool.map(run, SCRIPTS), strict=True))
