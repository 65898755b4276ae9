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


def under(*runs: tuple[str | None, str, str]) -> list[str]:
    """Each (skew, program, argument) in a process of its own, all at once, its clocks shifted
    by skew (faketime), if any; what each printed last."""
    started = []
    for skew, program, arg in runs:
        argv = [sys.executable, "-c", program, arg]
        if skew:
            argv = ["faketime", "-f", skew, *argv]
        started.append(
            subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    printed = []
    try:
        for proc in started:
            out, err = proc.communicate(timeout=60)
            if proc.returncode != 0:
                raise SystemExit(f"{proc.args}: {err}")
            printed.append(out.strip().splitlines()[-1] if out.strip() else "")
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait(60)
    return printed


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
    orchestrator = tasks.app.orchestrator
    redis = hasattr(orchestrator, "client")
    # A worker whose clock runs 40 s ahead sweeps: the holder beat just now.
    ahead, _ = held("skew-ahead")
    # The holder's worker runs 40 s behind: its last beat, written just now, is 40 s "old".
    behind, behind_runner = held("skew-behind")
    # The store lost the holder's beats (a Redis emptied, say): not dead until a window passes.
    unbeaten, runner = held("skew-unbeaten")
    if redis:
        orchestrator.client.hdel(orchestrator._k("beats"), runner)
    else:
        with closing(sqlite3.connect(orchestrator.sqlite_db_path)) as conn, conn:
            conn.execute(f"DELETE FROM {orchestrator.beats} WHERE runner_id = ?", (runner,))
    found = dict(
        zip(
            ("ahead", "", "unbeaten"),
            under(("+40s", SWEEP, ahead), ("-40s", BEAT, behind_runner), (None, SWEEP, unbeaten)),
            strict=True,
        )
    )
    # Those sweeps gave the unbeaten one a first beat; a window later (aged here), it is
    # recovered: the control, which shows the same sweep does recover a silent holder.
    if redis:
        if orchestrator.client.hexists(orchestrator._k("beats"), runner):
            orchestrator.client.hset(orchestrator._k("beats"), runner, 0)
    else:
        with closing(sqlite3.connect(orchestrator.sqlite_db_path)) as conn, conn:
            conn.execute(
                f"UPDATE {orchestrator.beats} SET at = at - 3600 WHERE runner_id = ?", (runner,)
            )
    found["behind"], found["unbeaten, a window later"] = under(
        (None, SWEEP, behind), (None, SWEEP, unbeaten)
    )
    del found[""]
    print(json.dumps(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
