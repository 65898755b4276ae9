"""Run one scenario against a running API and workers, and read back what happened.

It enqueues the calls through tasks.py, waits until each invocation is final, and reads what
the provider saw. It prints nothing.
"""

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

from demo import neighbours
from demo.outcome import Outcome
from demo.provider import Provider
from demo.scenarios import Scenario, Shape

POLL_SECONDS = 0.02
# The provider's counts of a scenario, as its report and an Outcome both name them.
COUNTS = ("calls", "collisions", "fenced", "throttled", "replayed", "conflicts")


@dataclass
class Sent:
    """What enqueue() sent: the distinct invocation ids in enqueue order, the late duplicates,
    each account's invocations, and when each account's first call was enqueued."""

    ids: list[str] = field(default_factory=list)
    late: list[str] = field(default_factory=list)
    by_account: dict[str, list[str]] = field(default_factory=dict)
    sent_at: dict[str, float] = field(default_factory=dict)  # seconds after `since`


def enqueue(
    scenario: Scenario, shape: Shape, tasks: ModuleType, since: float | None = None
) -> Sent:
    """Send every payload, one call at a time; since: a time.monotonic() to count from."""
    task = getattr(tasks, scenario.task)
    sent, since = Sent(), time.monotonic() if since is None else since
    seen: set[str] = set()
    for payload in shape.payloads(scenario):
        inv = task(**payload)
        account = payload["account_id"]
        sent.sent_at.setdefault(account, time.monotonic() - since)
        if inv.invocation_id in seen:  # a ReusedInvocation: merged into one already registered
            continue
        mine = sent.by_account.setdefault(account, [])
        if scenario.dedupes and mine:
            # Registration dedupe only sees REGISTERED invocations: say why this one is new.
            earlier = tasks.app.orchestrator.get_invocation_status(mine[0]).value
            sent.late.append(f"{account}: new invocation, the earlier one was already {earlier}")
        mine.append(inv.invocation_id)
        seen.add(inv.invocation_id)
        sent.ids.append(inv.invocation_id)
    return sent


def wait_finished(
    ids: list[str],
    tasks: ModuleType,
    timeout: float,
    check: Callable[[], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Poll until every invocation is final or the deadline passes; never blocks on a result.

    One query per poll for all that are still pending: the worker shares the database.
    progress, if given, hears (finished, total) on every poll.
    """
    deadline = time.monotonic() + timeout
    pending = set(ids)
    while pending:
        if check is not None:
            check()
        pending -= set(tasks.app.orchestrator.filter_final(list(pending)))
        if progress is not None:
            progress(len(ids) - len(pending), len(ids))
        if not pending or time.monotonic() >= deadline:
            return
        time.sleep(POLL_SECONDS)


# pynenc writes an invocation's history entry a moment after its status, stamped then; the
# monitor draws from the history. A scenario ends once its final entries are in, so that the
# next one's window (and link) begins after them. Past this many invocations (a query each),
# the links are left as they come.
HISTORY_CHECKED_UP_TO = 200
HISTORY_DEADLINE_SECONDS = 5.0


def wait_recorded(ids: list[str], tasks: ModuleType) -> None:
    """Until each final invocation's history holds its final status, up to a deadline."""
    if len(ids) > HISTORY_CHECKED_UP_TO:
        return
    deadline = time.monotonic() + HISTORY_DEADLINE_SECONDS
    pending = set(tasks.app.orchestrator.filter_final(list(ids)))
    while pending:
        backend = tasks.app.state_backend
        pending = {
            i
            for i in pending
            if not any(h.status_record.status.is_final() for h in backend.get_history(i))
        }
        if not pending or time.monotonic() >= deadline:
            return
        time.sleep(POLL_SECONDS)


def scenario(
    scenario: Scenario,
    shape: Shape,
    provider: Provider,
    tasks: ModuleType,
    timeout: float,
    check: Callable[[], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Outcome:
    """Run one scenario against a running API and workers, and return what happened.

    It resets the provider (its counts then belong to this scenario alone), enqueues every
    payload through tasks.py's task, and waits until each invocation is final or `timeout`
    has passed; it never blocks on a result, so a stuck invocation is reported as unfinished,
    not waited for. `check` runs on every poll and may raise to stop at once (sample.py
    checks its children there); `progress` hears (finished, total). The Outcome holds the
    provider's counts and calls, each invocation's status, and the run's window in epoch
    seconds. It prints nothing: demo/show.py does.
    """
    # This process only enqueues and watches: its own INFO lines would bury the summaries.
    tasks.app.logger.setLevel(logging.WARNING)
    payloads = shape.payloads(scenario)
    # Each account's quota, as its task declares it: one call in flight, or F's and G's limit.
    quota = {"slots": scenario.slots, "rate": scenario.rate, "per": scenario.per}
    provider.reset(scenario.heading, shape.hold, **{k: v for k, v in quota.items() if v})
    started, began = time.monotonic(), time.time()
    sent = enqueue(scenario, shape, tasks, since=started)
    ids = sent.ids
    # With Shape.sample, the first calls of each account are waited for, and the rest left.
    waited = [i for mine in sent.by_account.values() for i in mine[: shape.sample]]
    wait_finished(waited, tasks, timeout, check, progress)
    elapsed = time.monotonic() - started
    wait_recorded(ids, tasks)
    statuses = {i: tasks.app.orchestrator.get_invocation_status(i) for i in ids}
    report = provider.report()
    timeline = provider.timeline()
    late = sent.late
    if scenario.drops:
        # Calls after the first that did not collide: picked up once the key was free again.
        free = {n: a["calls"] - 1 - a["collisions"] for n, a in report["accounts"].items()}
        late = [f"{n}: called again once the key was free" for n in free for _ in range(free[n])]
    waited_for = set(waited)
    outcome = Outcome(
        scenario=scenario,
        shape=shape,
        enqueued=len(payloads),
        invocations=len(ids),
        statuses=Counter(s.value for s in statuses.values()),
        **{count: report[count] for count in COUNTS},
        per_account=dict(report["accounts"]),
        elapsed=elapsed,
        timeline=timeline,
        window=(began, time.time()),
        late=late,
        unfinished={
            i: s.value for i, s in statuses.items() if i in waited_for and not s.is_final()
        },
        abandoned=sum(1 for i, s in statuses.items() if i not in waited_for and not s.is_final()),
    )
    if scenario.measure:
        outcome.neighbours = neighbours.measure(outcome, sent.sent_at, ids, tasks)
    return outcome
