"""The records pynenc keeps of finished invocations, purged in small batches once a beat.

pynenc 0.3.1 and 0.4.0 stamp each invocation as it reaches a final status
(`set_up_invocation_auto_purge`) and keep it `auto_final_invocation_purge_hours` (24 by
default), but nothing calls `orchestrator.auto_purge()`; and that clears only the orchestrator's
rows, all of them in one transaction (SQLite: opening a second connection inside it, which waits
on its own lock). So the state backend's invocation, history, result and exception records, and
the orchestrator's, grow for as long as the workers run. Here, the claim's sweep (once a beat,
in each worker: keyclaim.recovery) purges, BATCH at a time, each its own short transaction
(SQLite `BEGIN IMMEDIATE`; Redis `MULTI`), the records of invocations final for longer than that
setting (SQLite: by pynenc's time of the status; Redis: by its purge stamp); never one the claim
still names (a key's holder, its line, a due time). The queue, the
trigger's own records (its `auto_purge_events`) and the claim's own are left to their owners.

The upstream change that retires it: pynenc's runners call `orchestrator.auto_purge()` on a
schedule, in batches, and it clears every component's records of each invocation it purges.
"""

import json
import time
from typing import TYPE_CHECKING, Any

from pynenc.invocation.status import InvocationStatus, InvocationStatusRecord
from pynenc.state_backend.base_state_backend import InvocationHistory

if TYPE_CHECKING:
    from pynenc import Pynenc

BATCH = 200  # invocations per transaction: a few milliseconds of SQLite's write lock
BATCHES = 5  # at most per sweep: a backlog is worked off over several beats
# pynenc's SQLite tables (orchestrator's, state backend's) and the columns naming an invocation.
SQLITE_ROWS = {
    "orchestrator": {
        "INVOCATIONS": ("invocation_id",),
        "INVOCATION_ARGS": ("invocation_id",),
        "BLOCKING_EDGES": ("waited_id", "waiter_id"),  # pynenc's release_waiters, and its waits
    },
    "state_backend": {
        "INVOCATIONS": ("invocation_id",),
        "HISTORY": ("invocation_id",),
        "RESULTS": ("invocation_id",),
        "EXCEPTIONS": ("invocation_id",),
        "WORKFLOWS": ("workflow_id",),  # a workflow's id is its root invocation's
        "WORKFLOW_DATA": ("workflow_id",),
        "WORKFLOW_SUB_INVOCATIONS": ("parent_workflow_id", "sub_invocation_id"),
    },
}
CLAIM_TABLES = ("holders", "lines", "dues")  # the claim's tables naming invocations it still needs


def sweep(app: "Pynenc") -> None:
    """The schedule's step: batches until one comes back short, at most BATCHES. A failure is
    logged and left to the next beat: the purge never stops a worker."""
    try:
        for _ in range(BATCHES):
            if purge_batch(app) < BATCH:
                return
    except Exception as failed:  # a locked or unreachable store: the next beat
        app.logger.warning(f"purging finished invocations: {failed!r}; tried again next beat")


def purge_batch(app: "Pynenc", batch: int = BATCH) -> int:
    """Purge one batch of invocations final for longer than the app's
    `auto_final_invocation_purge_hours`; returns how many were looked at (batch: maybe more)."""
    before = time.time() - app.orchestrator.conf.auto_final_invocation_purge_hours * 3600
    purge = _sqlite if hasattr(app.orchestrator, "sqlite_db_path") else _redis
    return purge(app, before, batch)


def _sqlite(app: "Pynenc", before: float, batch: int) -> int:
    from keyclaim import connections

    orchestrator = app.orchestrator
    invocations = orchestrator.tables.INVOCATIONS
    finals = [status.value for status in InvocationStatus.get_final_statuses()]
    statuses = ", ".join("?" * len(finals))
    claimed = [table for name in CLAIM_TABLES if (table := getattr(orchestrator, name, None))]
    named = "".join(f" AND invocation_id NOT IN (SELECT invocation_id FROM {t})" for t in claimed)
    final = f"SELECT invocation_id FROM {invocations} WHERE status IN ({statuses})"
    with connections.POOL.take(orchestrator.sqlite_db_path) as conn:
        # Found without the write lock, by pynenc's time of the final status; taken, still
        # final and named by no claim, under it.
        old = f"{final} AND status_timestamp <= ? LIMIT ?"
        found = [row[0] for row in conn.execute(old, (*finals, before, batch)).fetchall()]
        conn.commit()
        if not found:
            return 0
        conn.execute("BEGIN IMMEDIATE")
        ids = f" AND invocation_id IN ({', '.join('?' * len(found))})"
        gone = [row[0] for row in conn.execute(final + ids + named, (*finals, *found))]
        marks = ", ".join("?" * len(gone))
        for component, tables in SQLITE_ROWS.items():
            names = getattr(app, component).tables
            for table, columns in tables.items():
                for column in columns if gone else ():
                    name = getattr(names, table)
                    conn.execute(f"DELETE FROM {name} WHERE {column} IN ({marks})", gone)
    return len(found)


def _redis(app: "Pynenc", before: float, batch: int) -> int:
    orchestrator, client = app.orchestrator, app.orchestrator.client
    stamped = orchestrator.key.invocation_auto_purge()
    found = [i.decode() for i in client.zrangebyscore(stamped, 0, before, start=0, num=batch)]
    for invocation_id in found:
        _redis_one(app, invocation_id)
    return len(found)


def _redis_one(app: "Pynenc", invocation_id: str) -> None:
    """Every record pynenc-redis 0.3.0 keeps of one final invocation, in one MULTI."""
    orchestrator, state = app.orchestrator, app.state_backend
    client, key, kept = orchestrator.client, orchestrator.key, state.key
    if claim := getattr(orchestrator, "_k", None):
        names = client.exists(claim("holds", invocation_id), claim("parked", invocation_id))
        if names or client.zscore(claim("dues"), invocation_id) is not None:
            return
    raw = client.get(key.invocation_to_status(invocation_id))
    status = raw and InvocationStatusRecord.from_json(json.loads(raw)).status
    if status and not status.is_final():
        return
    found: dict[str, Any] = json.loads(client.get(kept.invocation(invocation_id)) or "{}")
    task, workflow = found.get("task_id_key", ""), found.get("workflow_id") or ""
    call = (client.get(key.invocation_to_call(invocation_id)) or b"").decode()
    arguments = found.get("serialized_arguments") or {}
    histories = client.lrange(kept.history(invocation_id), 0, -1)
    stamps = [InvocationHistory.from_json(h.decode()).timestamp.timestamp() for h in histories]
    orchestrator.release_waiters(invocation_id)  # what pynenc's auto_purge does first
    in_sets = [
        key.task(task),
        key.call_to_invocation(call),
        *(key.args(task, arg, value) for arg, value in arguments.items()),
        kept.workflow_invocations(workflow),
        kept.workflow_type_invocations(found.get("workflow_type_key") or ""),
        kept.parent_invocation_children(found.get("parent_invocation_id") or ""),
        kept.parent_event_children(found.get("parent_event_id") or ""),
        kept.workflow_sub_invocations(found.get("parent_workflow_id") or workflow),
    ]
    in_sets += [key.status_to_invocations(status)] if status else []
    in_zsets = [
        key.all_invocations_by_time(),
        key.task_invocations_by_time(task),
        key.invocation_auto_purge(),
    ]
    own = [
        *(key.invocation_to_status, key.pending_timer, key.previous_status),
        *(key.invocation_retries, key.invocation_to_call),
        *(kept.invocation, kept.history, kept.result, kept.exception),
        *(kept.parent_invocation_children, kept.workflow_invocations),
        *(kept.workflow_sub_invocations, kept.workflow_run_by_id),
    ]
    prefix = f"{invocation_id}:".encode()
    by_time = kept.history_by_timestamp()
    lines = client.zrangebyscore(by_time, min(stamps), max(stamps)) if stamps else []
    with client.pipeline() as pipe:  # MULTI: all of them or none
        pipe.delete(*(name(invocation_id) for name in own))
        for name in in_sets:
            pipe.srem(name, invocation_id)
        for name in in_zsets:
            pipe.zrem(name, invocation_id)
        if mine := [line for line in lines if line.startswith(prefix)]:
            pipe.zrem(by_time, *mine)
        pipe.execute()
