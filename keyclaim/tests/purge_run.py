"""The purge of finished invocations, run on an app of the caller's.

Calls run to their end in this process, two left RUNNING (a holder among them) and a call parked
behind the holder, then batches until the finished ones' records are gone. test_history.py
runs it in its own process on SQLite, and as a script on Redis, in an environment with
pynenc-redis: python purge_run.py REDIS_URL (one JSON line).
"""

import json
import os
import sqlite3
import sys
import time
import uuid
from typing import Any

from pynenc.invocation.status import InvocationStatus as S
from pynenc.runner.runner_context import RunnerContext

from keyclaim import history

RETAIN_HOURS = "0.0001"  # 0.36 s: PYNENC__AUTO_FINAL_INVOCATION_PURGE_HOURS, pynenc's own setting
# The claim's own Redis keys (its records are its own to purge), under the orchestrator's prefix.
CLAIM_KEYS = ("admitted", "beats", "claim_stats", "claimed_at", "dues", "fence", "fences")
CLAIM_KEYS += ("holders", "holds", "line", "parked", "slot", "slots")


def records(app: Any, invocation_id: str) -> list[str]:
    """pynenc's tables (SQLite; one per row) or keys (Redis; one per key or member) naming the
    invocation."""
    if hasattr(app.orchestrator, "sqlite_db_path"):
        with sqlite3.connect(app.orchestrator.sqlite_db_path) as conn:
            names = [
                *vars(app.orchestrator.tables).items(),
                *vars(app.state_backend.tables).items(),
            ]
            found = []
            for table in {table for name, table in names if name.isupper()}:
                columns = [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]
                where = " OR ".join(f"{column} = ?" for column in columns) or "0"
                query = f"SELECT count(*) FROM {table} WHERE {where}"
                rows = conn.execute(query, [invocation_id] * len(columns)).fetchone()[0]
                found += [table] * rows
            return found
    client, claim = app.orchestrator.client, app.orchestrator.key.prefix
    found, mark = [], invocation_id.encode()
    for key in client.scan_iter(f"__pynenc__:{app.app_id}:*", count=1000):
        name = key.decode()
        if name.startswith(claim) and name[len(claim) :].split(":")[0] in CLAIM_KEYS:
            continue
        kind = client.type(key).decode()
        members = {
            "set": client.smembers,
            "zset": lambda k: client.zrange(k, 0, -1),
            "list": lambda k: client.lrange(k, 0, -1),
            "hash": lambda k: [*client.hkeys(k), *client.hvals(k)],
        }.get(kind, lambda k: [])(key)
        found += [name] * ((mark in key) + sum(mark in member for member in members))
    return found


def run(app: Any, tasks: Any) -> dict[str, Any]:
    """Two calls RUNNING (one holding its key), one parked in that key's line, three run to
    SUCCESS; then one batch at a time until the three leave no record (30 s at most)."""
    ctx = RunnerContext(runner_cls="ThreadRunner")
    app.orchestrator.register_runner_heartbeats([ctx.runner_id])
    acct = f"acct-{uuid.uuid4().hex[:8]}"
    # RUNNING ones, a key's holder and one without a key, and the holder's line first: older
    # than the finished calls by the time those go.
    holder = tasks.call_keyed(acct, "held").invocation_id
    running = tasks.call_unsafe(acct, "running").invocation_id
    taken = [i.invocation_id for i in app.orchestrator.get_invocations_to_run(2, ctx)]
    for invocation_id in taken:
        app.orchestrator.set_invocation_status(invocation_id, S.RUNNING, ctx)
    parked = tasks.call_keyed(acct, "parked").invocation_id
    done = [tasks.call_keyed(f"{acct}-{n}", "op").invocation_id for n in range(2)]
    done.append(tasks.call_unsafe(acct, "op").invocation_id)
    for invocation in app.orchestrator.get_invocations_to_run(3, ctx):
        invocation.run(ctx)
    before = {i: len(records(app, i)) for i in [*done, holder, running, parked]}
    batches, ends = 0, time.monotonic() + 30
    while any(records(app, i) for i in done) and time.monotonic() < ends:
        history.purge_batch(app)
        batches += 1
        time.sleep(0.05)
    status = app.orchestrator.get_invocation_status
    return {
        "before": before,
        "after": {i: len(records(app, i)) for i in before},
        "left": sorted({name for i in done for name in records(app, i)}),
        "done": done,
        "running": [sorted(taken) == sorted([holder, running]), status(holder), status(running)],
        "parked": [parked, status(parked).value, len(app.state_backend.get_history(parked))],
        "batches": batches,
    }


if __name__ == "__main__":
    os.environ["PYNENC__AUTO_FINAL_INVOCATION_PURGE_HOURS"] = RETAIN_HOURS
    import claimapp
    from provider import Judge

    with Judge() as judge:
        redis_app = claimapp.build(f"keyclaim_purge_{uuid.uuid4().hex[:8]}", redis_url=sys.argv[1])
        print(json.dumps(run(redis_app, claimapp.bound(redis_app, judge.url))))
