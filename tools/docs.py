"""The `--help` blocks docs/configuration.md shows, made by cog from the scripts' own parsers.

Regenerate them: uv run cog -I . -r docs/configuration.md     (tests/test_docs.py checks them)
"""

import importlib
import os
from unittest import mock

WIDTH = "100"  # COLUMNS the blocks are made at


def help_block(module: str) -> str:
    """The `--help` of sample.py, enqueue.py or tools.bench, as a user's shell shows it at
    WIDTH columns and with no DEMO_* variable set, in a fenced block."""
    clean = {n: v for n, v in os.environ.items() if not n.startswith(("DEMO_", "PYNENC__"))}
    with mock.patch.dict(os.environ, {**clean, "COLUMNS": WIDTH}, clear=True):
        parser = importlib.import_module(module).build_parser()
        text = parser.format_help()
    return f"```\n{text.rstrip()}\n```\n"
