"""One scenario's steps against a running API and workers: enqueue, wait, read what happened.

enqueue.py's run() takes them in turn, after a reset of the provider.
"""

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from pynenc import Pynenc

from demo import noisy, progress, tiers
from demo.outcome import Outcome
from demo.provider import Provider
from demo.scenarios import Scenario, Shape

# How often a scenario looks whether its calls are final: its elapsed time is late by up to this.
POLL_SECONDS = 0.005
# The provider's counts of a scenario, as its report and an Outcome both name them.
COUNTS = ("calls", "collisions", "fenced", "throttled", "replayed", "conflicts")


@dataclass
class Stage:
    """Where scenarios run: the provider, the run's size, the deadline per scenario, and a
    check that runs on every poll and may raise to stop at once (sample.py checks its children
    there; enqueue.py, that a worker is left)."""

    provider: Provider
    shape: Shape
    timeout: float
    check: Callable[[], None] | None = None
    where: str = ""  # what runs now, for a crash report: the label of the scenario waited on


@dataclass
class Sent:
    """What enqueue() sent: the distinct invocation ids in enqueue order, the late duplicates,
    each account's invocations, and when each account's first call was enqueued; when it began
    (time.monotonic() and the epoch) and when the calls it waits for were final."""

    scenario: Scenario
    shape: Shape
    started: float = field(default_factory=time.monotonic)
    began: float = field(default_factory=time.time)
    ids: list[str] = field(default_factory=list)
    late: list[str] = field(default_factory=list)
    by_account: dict[str, list[str]] = field(default_factory=dict)
    sent_at: dict[str, float] = field(default_factory=dict)  # seconds after `started`
    elapsed: float = 0.0
    operator: tiers.Operator | None = None  # H's, while it runs

    @property
    def app(self) -> Pynenc:
        return self.scenario.task.app

    @property
    def waited(self) -> list[str]:
        """The invocations waited for: each account's first `shape.sample` ones, or all."""
        return [i for mine in self.by_account.values() for i in mine[: self.shape.sample]]


def enqueue(scenario: Scenario, shape: Shape, batch: bool = False) -> Sent:
    """Send every payload through the scenario's task, one call at a time; with batch, as one
    `parallelize` (the claim registers each of its batches in one transaction), unless the
    task merges duplicates as they register (D: a batch has no registration dedupe)."""
    # This process only enqueues and watches: its own INFO lines would bury the summaries.
    scenario.task.app.logger.setLevel(logging.WARNING)
    sent, seen = Sent(scenario, shape), set()
    if batch and not scenario.dedupes:
        payloads = shape.payloads(scenario)
        group = scenario.task.parallelize(payloads)
        for payload, inv in zip(payloads, group.invocations, strict=True):
            sent.sent_at.setdefault(payload["account_id"], time.monotonic() - sent.started)
            sent.by_account.setdefault(payload["account_id"], []).append(inv.invocation_id)
            sent.ids.append(inv.invocation_id)
        return sent
    for payload in shape.payloads(scenario):
        inv = scenario.task(**payload)
        account = payload["account_id"]
        sent.sent_at.setdefault(account, time.monotonic() - sent.started)
        if inv.invocation_id in seen:  # a ReusedInvocation: merged into one already registered
            continue
        mine = sent.by_account.setdefault(account, [])
        if scenario.dedupes and mine:
            # Registration dedupe only sees REGISTERED invocations: say why this one is new.
            earlier = sent.app.orchestrator.get_invocation_status(mine[0]).value
            sent.late.append(f"{account}: new invocation, the earlier one was already {earlier}")
        mine.append(inv.invocation_id)
        seen.add(inv.invocation_id)
        sent.ids.append(inv.invocation_id)
    return sent


def wait(sent: Sent, stage: Stage, label: str) -> None:
    """Until every invocation waited for is final, or the stage's deadline, polling with one
    query for all still pending, with a progress line named `label` on a terminal meanwhile;
    then the elapsed time is the scenario's. It never blocks on a result: a stuck one is left
    unfinished."""
    stage.where, waited = label, sent.waited
    pending = set(waited)
    if (rule := sent.scenario.tiers) is not None:
        sent.operator = tiers.Operator(stage.provider, sent.scenario.task, rule)
        sent.operator.start()
    with progress.line(label, stage.provider) as tick:
        deadline = time.monotonic() + stage.timeout
        while pending:
            if stage.check is not None:
                stage.check()
            polled = time.monotonic()
            pending -= set(sent.app.orchestrator.filter_final(list(pending)))
            if tick is not None:
                tick(len(waited) - len(pending), len(waited))
            if not pending or time.monotonic() >= deadline:
                break
            # A look at thousands of calls (on Redis, a read of each) takes CPU the workers
            # need: at most a fifth of this process's time goes to looking.
            time.sleep(max(POLL_SECONDS, 4 * (time.monotonic() - polled)))
    sent.elapsed = time.monotonic() - sent.started
    if sent.operator is not None:
        sent.operator.join(tiers.DEADLINE_SECONDS)
    wait_recorded(sent.ids, sent.app)


# pynenc writes an invocation's history entry a moment after its status, stamped then; the
# monitor draws from the history. A scenario ends once its final entries are in, so that the
# next one's window (and link) begins after them. Past this many invocations (a query each),
# the links are left as they come.
HISTORY_CHECKED_UP_TO = 200
HISTORY_DEADLINE_SECONDS = 5.0


def wait_recorded(ids: list[str], app: Pynenc) -> None:
    """Until each final invocation's history holds its final status, up to a deadline."""
    if len(ids) > HISTORY_CHECKED_UP_TO:
        return
    deadline = time.monotonic() + HISTORY_DEADLINE_SECONDS
    backend, pending = app.state_backend, set(app.orchestrator.filter_final(list(ids)))
    while pending:
        histories = {i: backend.get_history(i) for i in pending}
        pending = {
            i for i, h in histories.items() if not any(e.status_record.status.is_final() for e in h)
        }
        if not pending or time.monotonic() >= deadline:
            return
        time.sleep(POLL_SECONDS)


def outcome(sent: Sent, provider: Provider) -> Outcome:
    """What the scenario came to: the provider's counts and calls, each invocation's status,
    and the run's window in epoch seconds."""
    statuses = {i: sent.app.orchestrator.get_invocation_status(i) for i in sent.ids}
    report = provider.report()
    late = sent.late
    if sent.scenario.drops:
        # Calls after the first that did not collide: picked up once the key was free again.
        free = {n: a["calls"] - 1 - a["collisions"] for n, a in report["accounts"].items()}
        late = [f"{n}: called again once the key was free" for n in free for _ in range(free[n])]
    waited_for = set(sent.waited)
    pending = {i: s for i, s in statuses.items() if not s.is_final()}
    found = Outcome(
        scenario=sent.scenario,
        shape=sent.shape,
        enqueued=len(sent.shape.payloads(sent.scenario)),
        invocations=len(sent.ids),
        statuses=Counter(s.value for s in statuses.values()),
        **{count: report[count] for count in COUNTS},
        per_account=dict(report["accounts"]),
        elapsed=sent.elapsed,
        timeline=provider.timeline(),
        window=(sent.began, time.time()),
        late=late,
        unfinished={i: s.value for i, s in pending.items() if i in waited_for},
        abandoned=sum(1 for i in pending if i not in waited_for),
    )
    if sent.scenario.measure:
        # With N slots (keyclaim.limit) the busy account runs N calls at once: N per hold.
        per_slot = sent.shape.hold / sent.scenario.slots
        found.figures = noisy.measure(found.timeline, per_slot, sent.sent_at, sent.ids, sent.app)
    if (rule := sent.scenario.tiers) is not None and sent.operator is not None:
        found.figures = tiers.TierFigures(report, rule, sent.operator.failed)
        sent.operator.clear()  # the next run starts from the rule
    return found
