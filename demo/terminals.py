"""What enqueue.py says when the four terminals do not line up, in one line each.

No worker on its state, every worker gone mid-run, the workers calling another API; and what
a run that gives up leaves behind.
"""

from collections import Counter
from contextlib import closing
from types import ModuleType

from pynenc import Pynenc
from pynenc.broker.sqlite_broker import SQLiteBroker
from pynenc.exceptions import InvocationStatusError
from pynenc.invocation.status import InvocationStatus as S
from pynenc.runner.runner_context import RunnerContext
from pynenc.util.sqlite_utils import create_sqlite_connection

import keyclaim
from demo import live, settings
from demo.scenarios import Scenario

NO_WORKER_EXIT = 3  # enqueue.py's exit code when no worker runs, or none is left
BUSY_EXIT = 4  # when another run owns the provider


class GaveUp(Exception):
    """The run stopped waiting: what happened, and what it left behind."""


class Interrupted(Exception):
    """Ctrl-C mid-run: what it left behind."""


def state_and_start() -> tuple[str, str]:
    """Where the workers should be, and the command that starts one there."""
    runner = "pynenc --app tasks.app runner start"
    if settings.get("DEMO_BACKEND") == "redis":
        url = settings.get("REDIS_URL")
        start = f"DEMO_BACKEND=redis REDIS_URL={url} uv run --isolated --group redis {runner}"
        return f"the Redis at {url}", start
    db = settings.get("DEMO_DB")
    named = "" if db == settings.DEFAULTS["DEMO_DB"] else f"DEMO_DB={db} "
    return db, f"{named}uv run {runner}"


def no_worker() -> str:
    where, start = state_and_start()
    return (
        f"no worker is running on {where} (none beat in the last {live.ALIVE_WITHIN:g}s from "
        f"a process still running), so nothing was enqueued; start one in another terminal: "
        f"{start}"
    )


def no_worker_left(tasks: ModuleType, scenario: Scenario) -> str:
    where, start = state_and_start()
    return (
        f"every worker on {where} stopped mid-run; "
        f"{cancel_unpicked(tasks, scenario, workers_left=False)}; "
        f"start one in another terminal: {start}"
    )


def elsewhere(url: str) -> str:
    """Every invocation ended, and not one call reached this provider."""
    port = url.rsplit(":", 1)[1]
    return (
        f"the provider at {url} saw none of these calls, yet they ended: the workers call "
        f"another address. A worker's 'worker:' line says which; start it with DEMO_API_PORT={port}"
    )


def unfinished(tasks: ModuleType, task_names: set[str], statuses: list[S]) -> Counter[str]:
    """The invocations of these tasks in the state, by status, among `statuses`."""
    orchestrator = tasks.app.orchestrator
    return Counter(
        orchestrator.get_invocation_status(i).value
        for name in sorted(task_names)
        for i in orchestrator.get_existing_invocations(getattr(tasks, name), statuses=statuses)
    )


def listed(counts: Counter[str]) -> str:
    return ", ".join(f"{n} {status}" for status, n in counts.most_common())


def earlier_run_left(tasks: ModuleType, scenarios: list[Scenario]) -> str | None:
    """Invocations an earlier run left unfinished would run inside this one, and their calls
    would count as its own: what to say instead of starting."""
    left = unfinished(tasks, {s.task for s in scenarios}, [s for s in S if not s.is_final()])
    if not left:
        return None
    where, _ = state_and_start()
    return (
        f"{left.total()} invocations of an earlier run are still unfinished on {where} "
        f"({listed(left)}); they would run inside this one. Wait until the workers have run "
        "them, or give this run a state of its own (DEMO_DB=other.db, and a worker on it)"
    )


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


def cancel_unpicked(tasks: ModuleType, scenario: Scenario, workers_left: bool = True) -> str:
    """End the scenario's invocations no worker has picked up, so that none runs inside a
    later run, and say what was left: pynenc lets a REGISTERED invocation end as
    CONCURRENCY_CONTROLLED_FINAL (never run); one rerouted, pending or running cannot be
    ended from outside its worker.

    A stock runner takes an invocation off the queue, reads its status and writes the next
    one a moment later; ended in between, that write fails and the runner stops, killing every
    call it runs (pynenc 0.3.1's get_additional_invocations_to_run). So while workers are
    left, only an invocation this process takes off the queue itself is ended; one a worker
    took is left to it. The claim decides in one step, so under it (a call waits in its key's
    line, off the queue), or once no worker is left, each is ended where it is."""
    app, task = tasks.app, getattr(tasks, scenario.task)
    orchestrator, ctx = app.orchestrator, RunnerContext(runner_cls="enqueue.py")
    anywhere = not workers_left or keyclaim.waiting(app) is not None
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
    said = f"{cancelled} invocations no worker had picked up are cancelled (never to run)"
    if left := unfinished(tasks, {scenario.task}, [s for s in S if not s.is_final()]):
        said += f"; left as they are: {listed(left)}"
    return said
