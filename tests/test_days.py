"""The soak and the sizes' driver (docs/days.md), each in a tiny run.

The soak's one row and its verdict; the driver's calls, each claimed once, on both backends.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from demo.stack import ROOT
from long_runs import WITH_REDIS

pytestmark = pytest.mark.slow  # a stack, or thousands of store writes


def tool(argv: list[str], tmp_path: Path, redis: bool = False) -> str:
    """`uv run python -m tools.X ...` as docs/days.md runs it: its output, once it exited 0."""
    if redis and shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEMO_", "REDIS_URL"))}
    env["DEMO_LOG_DIR"], env["DEMO_DB"] = str(tmp_path / "logs"), str(tmp_path / "days.db")
    if env.get("VIRTUAL_ENV") != str(ROOT / ".venv"):
        env.pop("VIRTUAL_ENV", None)
    command = ["uv", "run", *(WITH_REDIS if redis else ()), "python", "-m", *argv]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_a_one_window_soak_prints_its_row_and_keeps_the_guarantees(tmp_path: Path) -> None:
    """A soak of a few seconds, one window: one row with the calls made, no collision, the
    store's totals and the worker's RSS; the flat verdict needs two windows; exit 0. Checked by
    mutation: with the claim's tables not told from pynenc's (CLAIM_TABLES empty), claim rows
    read 0 and this failed."""
    argv = ["tools.soak", "--minutes", "0.05", "--every", "1", "--atomic-claim", "--accounts", "5"]
    out = tool(argv, tmp_path)
    rows = re.findall(
        r"min  calls +([\d,]+)  collisions (\d+) .*claim rows +([\d,]+)  rss MB (\d+)", out
    )
    assert len(rows) == 1, out
    ((calls, collisions, claim, rss),) = rows
    assert int(calls.replace(",", "")) >= 20 and collisions == "0", out
    assert int(claim.replace(",", "")) > 0 and int(rss) > 0, out
    assert "flat after the first window (each reading within 10% of it): unknown" in out, out
    assert "broke a guarantee: 0" in out, out


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_the_sizes_driver_ends_each_call_and_the_claim_keeps_none_of_them(
    backend: str, tmp_path: Path
) -> None:
    """200 calls over 50 keys driven through the claim's own steps in one process, each to its
    end (the driver exits non-zero on one left unclaimed), with the store's totals printed:
    pynenc keeps its 200 invocations (its retention is minutes), the claim keeps none of
    them and no key's counter, only the floor. Checked by mutation: with the claim's per-call
    record kept at the final status (SQLite `_release` without its DELETE; Redis without the
    HDELs), claimed=200 / fences=200 showed up and this failed."""
    argv = ["tools.sizes", "--keys", "50", "--calls", "200", "--backend", backend]
    out = tool(argv, tmp_path, redis=backend == "redis")
    assert re.search(r"^ +200 calls .*/s", out, re.M), out
    if backend == "sqlite":
        assert " state_backend_invocations=200 " in out, out
        assert " orchestrator_fence_counters=1 " in out and "_claimed=" not in out, out
    else:
        entries = re.search(r"used_memory +[\d,]+  dbsize +[\d,]+  claim entries +(\d+)", out)
        assert entries and int(entries[1]) <= 5, out
        assert "fences=" not in out and "claimed_at=" not in out, out
