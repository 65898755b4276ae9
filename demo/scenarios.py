"""The four scenarios: what each enqueues, what it promises, and how a run is judged against it.

A scenario is one entry in SCENARIOS plus its task in tasks.py: the entry says what it sends
and what it promises, and nothing else here asks which scenario it is. Nothing here starts a
process; enqueue.py and sample.py run the scenarios through demo/show.py.
"""

import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

from demo import settings
from demo.provider import Provider

# pynenc's InvocationStatus values, as an Outcome counts them. By value, so that sample.py
# imports pynenc only with tasks.py, once its children are starting.
DROPPED, FAILED = "concurrency_controlled_final", "failed"
POLL_SECONDS = 0.02


@dataclass(frozen=True)
class Shape:
    """How big a run is: the article's defaults, or scaled up with the CLI's knobs."""

    accounts: int = len(settings.ACCOUNTS)
    ops: int = len(settings.OPS)
    hold: float = settings.HOLD_SECONDS
    refreshes: int = settings.REFRESHES_PER_ACCOUNT
    workers: int = 1
    threads: int = settings.MAX_THREADS

    def payloads(self, scenario: "Scenario") -> list[dict[str, str]]:
        return scenario.sends(self)

    def floor(self, scenario: "Scenario") -> float:
        """The least time the provider could take: hold x the longest chain of calls.

        Calls go out in waves of every thread of every worker; under a key, one account's calls
        also run one after another, so the chain is at least that account's calls.
        """
        each = scenario.ideal_calls_per_account(self)
        waves = math.ceil(self.accounts * each / (self.threads * self.workers))
        return (max(each, waves) if scenario.keyed else waves) * self.hold


def every_op(shape: Shape) -> list[dict[str, str]]:
    """Account by account, as the article does: every op for acme, then for globex, ..."""
    ops = settings.op_names(shape.ops)
    return [
        {"account_id": a, "op": op} for a in settings.account_names(shape.accounts) for op in ops
    ]


def refresh_bursts(shape: Shape) -> list[dict[str, str]]:
    """A burst of refreshes per account, as a noisy event bus fires them."""
    accounts = settings.account_names(shape.accounts)
    return [{"account_id": a} for a in accounts for _ in range(shape.refreshes)]


@dataclass(frozen=True)
class Scenario:
    """One scenario: its task, what it sends, and what it promises."""

    key: str
    letter: str
    title: str
    task: str  # the name of its task in tasks.py
    sends: Callable[[Shape], list[dict[str, str]]] = every_op
    # The ideal run calls each account once (C, D), not once per op (A, B).
    once_per_account: bool = False
    # running_concurrency=KEYS: never two calls in flight for one account, so a collision
    # breaks it, and one account's calls run in a row (its floor).
    keyed: bool = False
    # reroute=False: a call picked up while its account is busy ends dropped, never run, so
    # calls + dropped = enqueued; a call picked up once the account was free again is late.
    drops: bool = False
    # registration_concurrency=KEYS: a duplicate merges into the invocation still queued, so
    # each invocation is called once; one made after the first was picked up is late.
    dedupes: bool = False

    @property
    def heading(self) -> str:
        return f"{self.letter}. {self.key} — {self.title}"

    @property
    def every_call_runs(self) -> bool:
        """Neither drops nor merges: each enqueued call reaches the provider exactly once."""
        return not (self.drops or self.dedupes)

    def ideal_calls_per_account(self, shape: Shape) -> int:
        return 1 if self.once_per_account else shape.ops


SCENARIOS: dict[str, Scenario] = {
    s.key: s
    for s in (
        Scenario("unsafe", "A", "no concurrency control", "call_unsafe"),
        Scenario("keyed", "B", "running_concurrency=KEYS, reroute=True", "call_keyed", keyed=True),
        Scenario(
            "drop",
            "C",
            "running_concurrency=KEYS, reroute=False",
            "call_keyed_drop",
            once_per_account=True,
            keyed=True,
            drops=True,
        ),
        Scenario(
            "dedupe",
            "D",
            "registration + running KEYS",
            "refresh_once",
            sends=refresh_bursts,
            once_per_account=True,
            keyed=True,
            dedupes=True,
        ),
    )
}


@dataclass
class Outcome:
    scenario: Scenario
    shape: Shape
    enqueued: int
    invocations: int
    statuses: Counter[str]
    calls: int
    collisions: int
    per_account: dict[str, dict[str, int]]
    elapsed: float
    timeline: list[dict[str, object]]
    # Epoch seconds: just before the first enqueue, and once every invocation was final and
    # the provider's report was read: the next scenario starts after it, so windows never overlap.
    window: tuple[float, float]
    # Invocations that pynenc created although one for the key was already queued or running.
    late: list[str] = field(default_factory=list)
    unfinished: dict[str, str] = field(default_factory=dict)

    @property
    def dropped(self) -> int:
        return self.statuses[DROPPED]

    @property
    def deduped(self) -> int:
        return self.enqueued - self.invocations

    @property
    def failed(self) -> int:
        return self.statuses[FAILED]

    @property
    def ideal_calls(self) -> int:
        return self.shape.accounts if self.scenario.once_per_account else self.enqueued

    @property
    def extra_calls(self) -> int:
        return max(0, self.calls - self.ideal_calls)

    @property
    def floor(self) -> float:
        return self.shape.floor(self.scenario)

    def broken(self) -> list[str]:
        """Each guarantee that did not hold, in words; empty when the run kept its promises."""
        s, problems = self.scenario, []
        if self.unfinished:
            shown = ", ".join(f"{i} {st}" for i, st in list(self.unfinished.items())[:5])
            problems.append(f"{len(self.unfinished)} invocations never finished ({shown})")
        if self.failed:
            problems.append(f"{self.failed} invocations failed")
        if s.keyed and self.collisions:
            problems.append(f"{self.collisions} collisions under running_concurrency=KEYS")
        if s.every_call_runs and self.calls != self.enqueued:
            problems.append(f"{self.calls} calls for {self.enqueued} enqueued")
        if s.drops and self.calls + self.dropped != self.enqueued:
            problems.append(f"{self.calls} calls + {self.dropped} dropped != {self.enqueued}")
        if s.dedupes and self.calls != self.invocations:
            problems.append(f"{self.calls} calls for {self.invocations} invocations")
        return problems


def enqueue(scenario: Scenario, shape: Shape, tasks: ModuleType) -> tuple[list[str], list[str]]:
    """Send every payload; return the distinct invocation ids and the late duplicates."""
    task = getattr(tasks, scenario.task)
    ids: dict[str, None] = {}  # in enqueue order
    first_for: dict[str, str] = {}
    late: list[str] = []
    for payload in shape.payloads(scenario):
        inv = task(**payload)
        if inv.invocation_id in ids:  # a ReusedInvocation: merged into one already registered
            continue
        account = payload["account_id"]
        if scenario.dedupes and account in first_for:
            # Registration dedupe only sees REGISTERED invocations: say why this one is new.
            earlier = tasks.app.orchestrator.get_invocation_status(first_for[account]).value
            late.append(f"{account}: new invocation, the earlier one was already {earlier}")
        first_for.setdefault(account, inv.invocation_id)
        ids[inv.invocation_id] = None
    return list(ids), late


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


def run(
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
    provider.reset(scenario.heading, shape.hold)
    started, began = time.monotonic(), time.time()
    ids, late = enqueue(scenario, shape, tasks)
    wait_finished(ids, tasks, timeout, check, progress)
    elapsed = time.monotonic() - started
    statuses = {i: tasks.app.orchestrator.get_invocation_status(i) for i in ids}
    report = provider.report()
    timeline = provider.timeline()
    if scenario.drops:
        # Calls after the first that did not collide: picked up once the key was free again.
        free = {n: a["calls"] - 1 - a["collisions"] for n, a in report["accounts"].items()}
        late = [f"{n}: called again once the key was free" for n in free for _ in range(free[n])]
    return Outcome(
        scenario=scenario,
        shape=shape,
        enqueued=len(payloads),
        invocations=len(ids),
        statuses=Counter(s.value for s in statuses.values()),
        calls=report["calls"],
        collisions=report["collisions"],
        per_account=dict(report["accounts"]),
        elapsed=elapsed,
        timeline=timeline,
        window=(began, time.time()),
        late=late,
        unfinished={i: s.value for i, s in statuses.items() if not s.is_final()},
    )
