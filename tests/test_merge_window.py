"""D with the merge window: 24 events make 3 calls in every round, with 1 worker or 3.

tasks.MERGE, keyclaim.limit(merge=...), over 20 rounds: real worker processes, the claim and
the wake runner, whose pushed wake starts a refresh the moment its window ends."""

import subprocess
from pathlib import Path

import pytest

from demo.processes import free_port
from demo.stack import ROOT
from helpers import user_env

ROUNDS = 20


@pytest.mark.slow  # 20 rounds and the workers' start: ~15 s each
@pytest.mark.parametrize("workers", [1, 3])
def test_a_burst_merges_into_one_call_per_account_in_every_round(
    tmp_path: Path, workers: int
) -> None:
    """Checked by mutation: without the window (refresh_once without keyclaim.limit), one
    worker made 4 to 6 calls a round, and three 4, 5 and 6 in three rounds: a worker woken by
    a burst's first event starts its refresh mid-burst, and the rest make a second one."""
    argv = ["uv", "run", "python", "-m", "tools.stress", "--atomic-claim", "--runner", "wake"]
    argv += ["--workers", str(workers), "--rounds", str(ROUNDS), "--hold", "0.1", "--no-chart"]
    argv += ["--scenarios", "dedupe_only:SCENARIOS", "--port", str(free_port())]
    argv += ["--db", str(tmp_path / "demo.db"), "--ready-timeout", "120"]
    env = {**user_env(tmp_path), "PYTHONPATH": str(ROOT / "tests")}
    run = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stdout + run.stderr
    rounds = [line for line in run.stdout.splitlines() if line.startswith("round ")]
    assert rounds == [f"round {n}/{ROUNDS}: D 3/0" for n in range(1, ROUNDS + 1)], run.stdout
