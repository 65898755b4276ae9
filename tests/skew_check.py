"""A live holder under skewed clocks: one sweep by a worker 40 s ahead, one holder 40 s behind.

Run by tests/test_production.py with the claim on and a 30 s dead-after window (the skew is
past it), on its own SQLite file or Redis, each skewed process under faketime:
python tests/skew_check.py   (uv run --isolated --group redis ... for Redis). It prints one
JSON object: the holder's status after each sweep (and one whose beats the store lost).
"""

import json
import sqlite3
import subprocess
import sys
from contextlib import closing

from pynenc.invocation.status import InvocationStatus as S
from pynenc.runner.runner_context import RunnerContext

import tasks

SWEEP = """
import sys, tasks
from pynenc.runner.runner_context import RunnerContext
tasks.app.orchestrator.recover_silent_runners(RunnerContext(runner_cls="ThreadRunner"))
print(tasks.app.orchestrator.get_invocation_status(sys.argv[1]).value)
"""
BEAT = """
import sys, tasks
tasks.app.orchestrator.register_runner_heartbeats([sys.argv[1]])
"""


def under(skew: str | None, program: str, *args: str) -> str:
    """Run program in a process of its own, its clocks shifted by skew (faketime), if any."""
    argv = [sys.executable, "-c", program, *args]
    if skew:
        argv = ["faketime", "-f", skew, *argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{argv}: {done.stderr}")
    return done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""


def held(account: str) -> tuple[str, str]:
    """An invocation of account, claimed and RUNNING under a runner of its own."""
    orchestrator, ctx = tasks.app.orchestrator, RunnerContext(runner_cls="ThreadRunner")
    orchestrator.register_runner_heartbeats([ctx.runner_id])
    invocation = tasks.call_keyed(account, "op0")
    (claimed,) = orchestrator.get_invocations_to_run(1, ctx)
    assert claimed.invocation_id == invocation.invocation_id, f"{account}: another one was queued"
    orchestrator.set_invocation_status(invocation.invocation_id, S.RUNNING, ctx)
    return invocation.invocation_id, ctx.runner_id


def main() -> int:
    tasks.app.purge()
    found = {}
    # A worker whose clock runs 40 s ahead sweeps: the holder beat just now.
    ahead, _ = held("skew-ahead")
    found["ahead"] = under("+40s", SWEEP, ahead)
    # The holder's worker runs 40 s behind: its last beat, written just now, is 40 s "old".
    behind, runner = held("skew-behind")
    under("-40s", BEAT, runner)
    found["behind"] = under(None, SWEEP, behind)
    # The store lost the holder's beats (a Redis emptied, say): not dead until a window passes.
    unbeaten, runner = held("skew-unbeaten")
    orchestrator = tasks.app.orchestrator
    if hasattr(orchestrator, "client"):
        orchestrator.client.hdel(orchestrator._k("beats"), runner)
    else:
        with closing(sqlite3.connect(orchestrator.sqlite_db_path)) as conn, conn:
            conn.execute(f"DELETE FROM {orchestrator.beats} WHERE runner_id = ?", (runner,))
    found["unbeaten"] = under(None, SWEEP, unbeaten)
    # That sweep gave it a first beat; a window later (aged here), it is recovered: the
    # control, which shows the same sweep does recover a silent holder.
    if hasattr(orchestrator, "client"):
        if orchestrator.client.hexists(orchestrator._k("beats"), runner):
            orchestrator.client.hset(orchestrator._k("beats"), runner, 0)
    else:
        with closing(sqlite3.connect(orchestrator.sqlite_db_path)) as conn, conn:
            conn.execute(
                f"UPDATE {orchestrator.beats} SET at = at - 3600 WHERE runner_id = ?", (runner,)
            )
    found["unbeaten, a window later"] = under(None, SWEEP, unbeaten)
    print(json.dumps(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
