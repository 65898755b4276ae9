"""What sample.py's start-up rests on (docs/speed.md), checked without timing it.

The API and the worker start before sample.py imports pynenc, httpx or rich; the provider boots
without pynenc and httpx without its command line; the figure counts from the command typed."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from demo.processes import free_port
from demo.stack import ROOT

pytestmark = pytest.mark.integration  # a Python process each, no network

HEAVY = ("pynenc", "httpx", "rich", "fastapi", "click", "pygments")
SHOW = f"import sys; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
# sample.py's own start, up to the moment it starts its first child, where it stops.
UNTIL_THE_FIRST_CHILD = f"""
import sys
import sample
from demo import stack

def start_child(*args, **kwargs):
    {SHOW}
    raise SystemExit(0)

stack.start_child = start_child
sample.main(sys.argv[1:])
"""


def python(code: str, *args: str, env: dict[str, str] | None = None) -> str:
    argv = [sys.executable, "-c", code, *args]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip()


def test_sample_starts_its_children_before_it_imports_the_heavy_modules(tmp_path: Path) -> None:
    """Three processes boot at once on two cores: one that imports pynenc before it starts the
    other two keeps a core idle meanwhile. Checked by mutation: with `from pynenc import Pynenc`
    at the top of sample.py again, as it was, pynenc is loaded by then and this fails."""
    env = {**os.environ, "DEMO_LOG_DIR": str(tmp_path / "logs")}
    args = ("--port", str(free_port()), "--db", str(tmp_path / "demo.db"))
    assert python(UNTIL_THE_FIRST_CHILD, *args, env=env) == ""


def test_the_provider_and_the_worker_boot_without_what_they_do_not_run(tmp_path: Path) -> None:
    """Checked by mutation: with demo/scenarios.py importing pynenc at its top again, the
    provider loads it and the first assertion fails; without demo/__init__.py's line, the
    worker's httpx loads click, rich and pygments and the second fails."""
    assert "pynenc" not in python(f"import api_server; {SHOW}").split()
    env = {**os.environ, "DEMO_DB": str(tmp_path / "demo.db")}
    assert python(f"import tasks; {SHOW}", env=env).split() == ["pynenc", "httpx"]


def test_the_start_up_counts_from_the_uv_run_a_user_types() -> None:
    """`uv run python sample.py` starts Python as a child of uv, whose own start (resolving the
    environment) is part of what a user waits for; started otherwise, the process is the
    command. Checked by mutation: with command_pid() always the process's own, the first fails."""
    check = "import os; from demo.launch import command_pid; print(command_pid() == {})"
    uv_run = ["uv", "run", "python", "-c", check.format("os.getppid()")]
    done = subprocess.run(uv_run, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "True", done.stdout + done.stderr
    assert python(check.format("os.getpid()")) == "True"
