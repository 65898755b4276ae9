"""The pushed wake, counted: calls queued for free keys, and how the workers' loops started.

Wake workers whose idle cadence is long, calls queued one by one, and each worker's loops as
it logs them when it stops.

Imported by test_wake.py on SQLite; run by it on Redis, in an environment with pynenc-redis:
python wake_run.py URL FOLDER WORKERS CALLS IDLE [drop]. It prints one JSON object.
"""

import ast
import json
import re
import sqlite3
import sys
from contextlib import closing
from functools import partial
from pathlib import Path
from typing import Any

from claimkit import WAIT, Claim, Workers, new_claim, unique, wait_until
from provider import Judge
from pynenc.invocation.status import InvocationStatus as S


def loops(log: str) -> dict[str, int]:
    """What the wake runner logged as it stopped: its loops, by how each was started."""
    (found,) = re.findall(r"wake runner's loops: (\{[^}]*\})", log)
    return ast.literal_eval(found)


def one_key_calls(claim: Claim, task: Any, key: str, calls: int) -> list[Any]:
    """The first call held in flight until the worker's own calls (pynenc's, registered by
    its first loop) have ended, whose threads' ends wake its loop; then the others, parked
    behind it. From its end on, only a hand-over moves the key: no loop is awake to race the
    thread it was handed from for the next call."""
    with claim.provider.paused():
        first = task(key, "op")
        claim.provider.wait_in_flight(key)
        wait_until(lambda: others_final(claim, first.invocation_id), WAIT, "pynenc's own calls")
        return [first, *(task(key, "op") for _ in range(calls - 1))]


def others_final(claim: Claim, mine: str) -> bool:
    """Whether every invocation in the app's SQLite database but `mine` is final."""
    orchestrator = claim.app.orchestrator
    with closing(sqlite3.connect(orchestrator.sqlite_db_path)) as conn:
        table = orchestrator.tables.INVOCATIONS
        rows = conn.execute(f"SELECT invocation_id, status FROM {table}").fetchall()
    return all(S(status).is_final() for invocation_id, status in rows if invocation_id != mine)


def counted(
    claim: Claim,
    folder: Path,
    workers: int,
    calls: int,
    idle: str,
    drop: bool = False,
    one_key: bool = False,
) -> dict:
    """drop: the producer's notifications are lost (never sent), for calls open to merging
    (claimapp.call_merged): off the queue until a worker releases them at their due time.
    one_key: every call for the same key, each handed the key by the one before."""
    if drop:
        claim.app.orchestrator.notify = lambda due_in, count: None
    started = Workers(claim, folder)
    try:
        for _ in range(workers):
            # A sweep (each beat, a quarter of dead_after) releases due calls too: not meanwhile.
            started.start(runner="wake", idle=idle, dead_after="120", longest_call="10")
        if drop:  # past its first sweep, which would release the call: once it waited idle
            idle_once = partial(started.started[0].logged, "wake runner idle")
            wait_until(idle_once, WAIT, "the worker's first idle wait")
        task = claim.tasks.call_merged if drop else claim.tasks.call_keyed
        key = unique()
        if one_key:
            sent = one_key_calls(claim, task, key, calls)
        else:
            sent = [task(unique(), "op") for _ in range(calls)]
        statuses = claim.final(*(call.invocation_id for call in sent), deadline=20)
    finally:
        started.stop_all()
    logs = [worker.log_path.read_text() for worker in started.started]
    # Each call queued sends one notification: the test's, and the workers' own (pynenc's
    # recovery tasks, which its cron registers as a worker starts).
    queued = 1 if one_key else calls  # the others wait in the key's line
    sent = (0 if drop else queued) + sum(log.count("REGISTERED, ROUTED") for log in logs)
    looks = [loops(log) for log in logs]
    return {"statuses": [status.value for status in statuses], "looks": looks, "sent": sent}


if __name__ == "__main__":
    url, folder, workers, calls, idle, *drop = sys.argv[1:]
    Path(folder).mkdir(exist_ok=True)
    with Judge() as provider:
        claim = new_claim(Path(folder), provider, redis_url=url)
        found = counted(claim, Path(folder), int(workers), int(calls), idle, drop == ["drop"])
    print(json.dumps(found))
