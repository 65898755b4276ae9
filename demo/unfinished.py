"""Invocations a run leaves unfinished on its state: counted, and those no worker picked up ended.

enqueue.py words what it finds here (demo/checks.py).
"""

from collections import Counter
from collections.abc import Iterable
from contextlib import closing
from typing import Any

from pynenc import Pynenc
from pynenc.broker.sqlite_broker import SQLiteBroker
from pynenc.exceptions import InvocationStatusError
from pynenc.invocation.status import InvocationStatus as S
from pynenc.runner.runner_context import RunnerContext
from pynenc.util.sqlite_utils import create_sqlite_connection

import keyclaim

STATUSES = [s for s in S if not s.is_final()]  # an invocation in one of these is unfinished


def by_status(tasks: Iterable[Any], statuses: list[S]) -> Counter[str]:
    """The invocations of these pynenc tasks in their app's state, by status, among `statuses`."""
    found: Counter[str] = Counter()
    for task in {t.task_id.key: t for t in tasks}.values():
        orchestrator = task.app.orchestrator
        for i in orchestrator.get_existing_invocations(task, statuses=statuses):
            found[orchestrator.get_invocation_status(i).value] += 1
    return found


def taken_off_the_queue(app: Pynenc, invocation_id: str) -> bool:
    """Whether this call took a REGISTERED invocation off the broker's queue, where no worker
    can pick it up any more; False when a worker took it first (or it was never there)."""
    broker = app.broker
    if isinstance(broker, SQLiteBroker):  # one statement: it is still REGISTERED as it goes
        invocations = app.orchestrator.tables.INVOCATIONS
        query = (
            f"DELETE FROM {broker.tables.QUEUE} WHERE invocation_id = ? AND invocation_id IN "
            f"(SELECT invocation_id FROM {invocations} WHERE status = ?)"
        )
        with closing(create_sqlite_connection(broker.sqlite_db_path)) as conn, conn:
            return conn.execute(query, (invocation_id, S.REGISTERED.value)).rowcount > 0
    return broker.client.lrem(broker.key.default_queue(), 0, invocation_id) > 0  # Redis


def cancel(task: Any, workers_left: bool = True) -> int:
    """End the task's invocations no worker has picked up, so that none runs inside a later run;
    how many were ended. pynenc lets a REGISTERED invocation end as CONCURRENCY_CONTROLLED_FINAL
    (never run); one rerouted, pending or running cannot be ended from outside its worker.

    A stock runner takes an invocation off the queue, reads its status and writes the next
    one a moment later; ended in between, that write fails and the runner stops, killing every
    call it runs (pynenc 0.3.1's get_additional_invocations_to_run). So while workers are
    left, only an invocation this process takes off the queue itself is ended; one a worker
    took is left to it. The claim decides in one step, so under it (a call waits in its key's
    line, off the queue), or once no worker is left, each is ended where it is."""
    app = task.app
    orchestrator, ctx = app.orchestrator, RunnerContext(runner_cls="enqueue.py")
    anywhere = not workers_left or keyclaim.inspect.waiting(app) is not None
    cancelled = 0
    for invocation_id in list(orchestrator.get_existing_invocations(task, statuses=[S.REGISTERED])):
        if not ((taken := taken_off_the_queue(app, invocation_id)) or anywhere):
            continue
        try:
            orchestrator.set_invocation_status(invocation_id, S.CONCURRENCY_CONTROLLED_FINAL, ctx)
        except InvocationStatusError:  # a worker moved it on first: it is left to that worker
            if taken:  # Redis: rerouted and queued again since listed; that message goes back
                app.broker.route_invocation(invocation_id)
            continue
        cancelled += 1
    return cancelled
