"""What one frame of `python -m keyclaim top` reads, with few keys ever seen and with many.

Run by test_top.py: python top_cost.py FOLDER FEW MANY [REDIS_URL] (no URL: SQLite in FOLDER),
in an environment with pynenc-redis for Redis. No worker: a claimer of this process ends FEW
keys' calls (SUCCESS), leaves two keys busy (one of one slot: its holder running, two in its
line; one of two slots: both running, one in line), reads a frame, ends keys up to MANY, and
reads a frame again.
For each frame: what it reported reading, the store's own count (Redis: the commands its
INFO counted, but INFO itself), the time, and whether the whole store was the same after it.
It prints one JSON object; the test asserts on it.
"""

import json
import sqlite3
import sys
import time
from contextlib import closing
from pathlib import Path

import claimapp
from pynenc.invocation.status import InvocationStatus as S
from pynenc.runner.runner_context import RunnerContext

from keyclaim import top

folder, few, many = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
redis_url = sys.argv[4] if len(sys.argv) > 4 else ""
db = "" if redis_url else str(folder / "top_cost.db")
app = claimapp.build("keyclaim_top_cost", db=db, redis_url=redis_url)
tasks = claimapp.bound(app, "http://127.0.0.1:9")  # nothing here runs a call
claimer, ctx = app.orchestrator, RunnerContext(runner_cls="ThreadRunner")
claimer.register_runner_heartbeats([ctx.runner_id])
ended = 0


def end_keys_up_to(count: int) -> None:
    """Each of keys ended..count-1 used once: its call registered, claimed, run, SUCCESS."""
    global ended
    for start in range(ended, count, 100):  # a hundred at a time: the queue stays short
        claimer.register_runner_heartbeats([ctx.runner_id])  # its busy keys' holders live on
        chunk = range(start, min(count, start + 100))
        for n in chunk:
            tasks.call_keyed(f"ended-{n}", "op")
        left = len(chunk)
        while left:
            for invocation in claimer.get_invocations_to_run(left, ctx):
                claimer.set_invocation_status(invocation.invocation_id, S.RUNNING, ctx)
                claimer.set_invocation_status(invocation.invocation_id, S.SUCCESS, ctx)
                left -= 1
    ended = count


def store() -> object:
    """The whole store, to compare: every row (SQLite), every key's value (Redis)."""
    if not redis_url:
        with closing(sqlite3.connect(db)) as conn:
            return list(conn.iterdump())
    client = claimer.client
    return {name: client.dump(name) for name in sorted(client.scan_iter(count=1000))}


def commands() -> int:
    """Redis: the commands it has run, INFO's own left out."""
    stats = claimer.client.info("commandstats")
    return sum(s["calls"] for name, s in stats.items() if name != "cmdstat_info")


def frame() -> dict:
    before, counted = store(), commands() if redis_url else 0
    started, cpu = time.perf_counter(), time.process_time()
    doc = top.frame(app)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    counted = commands() - counted if redis_url else None
    keys = {k["key"]: [len(k["holders"]), k["waiting"]] for k in doc["keys"]}
    return {
        "reads": doc["reads"],
        "store_counted": counted,
        "keys": keys,
        "ms": round(seconds * 1000, 2),
        "cpu_ms": round(cpu * 1000, 2),
        "unchanged": store() == before,
    }


end_keys_up_to(few)
for n in range(3):
    tasks.call_keyed("busy-one", f"op{n}")
    tasks.call_two("busy-two", f"op{n}")
for holder in claimer.get_invocations_to_run(3, ctx):  # the heads: RUNNING, none recovered
    claimer.set_invocation_status(holder.invocation_id, S.RUNNING, ctx)
found = {"few": frame()}
end_keys_up_to(many)
found["many"] = frame()
print(json.dumps(found))
