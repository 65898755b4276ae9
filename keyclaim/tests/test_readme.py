"""The README's usage block, run as a user would copy it."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"  # the library's own

SECOND_CALL_WAITS = """
import billing, keyclaim
billing.charge("acct-1", 10)
billing.charge("acct-1", 20)  # the same account, busy: it waits in the account's line
print(keyclaim.waiting(billing.app))
"""


def usage_block() -> str:
    (block,) = re.findall(r"## Use\n\n```python\n(.*?)```", README.read_text(), re.S)
    return block


def test_the_readmes_usage_block_parks_a_busy_accounts_next_call_in_its_line(
    tmp_path: Path,
) -> None:
    """The README promises a line per key in which waiting calls keep their order. pynenc's
    tasks drop a blocked call unless reroute_on_concurrency_control is set (its default is
    False in 0.3.1 and 0.4.0): the block as first written dropped the account's second charge
    (CONCURRENCY_CONTROLLED_FINAL) instead of parking it."""
    (tmp_path / "billing.py").write_text(usage_block())
    argv = [sys.executable, "-c", SECOND_CALL_WAITS]
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "1", done.stdout
