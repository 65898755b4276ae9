"""The scenarios: what each enqueues, what it promises, and how a run is judged against it.

A scenario is one entry in SCENARIOS plus its task in tasks.py: the entry says what it sends
and what it promises, and nothing else here asks which scenario it is. Nothing here starts a
process; enqueue.py and sample.py run the scenarios through demo/show.py.
"""

import logging
import math
import statistics
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
    backlog: int = settings.BACKLOG  # E: the busy account's calls
    # Wait for at most this many calls of each account, and leave the rest unrun: --bench
    # samples a long backlog instead of waiting it out. None: wait for every call.
    sample: int | None = None

    def payloads(self, scenario: "Scenario") -> list[dict[str, str]]:
        return scenario.sends(self)

    def floor(self, scenario: "Scenario") -> float:
        """The least time the provider could take: hold x the longest chain of calls.

        Calls go out in waves of every thread of every worker; under a key, one account's calls
        also run one after another, so the chain is at least that account's calls.
        """
        each = scenario.ideal_calls(self)
        if self.sample:
            each = Counter({account: min(n, self.sample) for account, n in each.items()})
        waves = math.ceil(sum(each.values()) / (self.threads * self.workers))
        return (max(max(each.values()), waves) if scenario.keyed else waves) * self.hold


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


def noisy_neighbour(shape: Shape) -> list[dict[str, str]]:
    """One account's backlog (its ops numbered in enqueue order), then the quiet accounts'
    one call each, enqueued right after it."""
    hot = [{"account_id": settings.HOT_ACCOUNT, "op": f"op{n:05d}"} for n in range(shape.backlog)]
    quiet = [f"quiet{n:02d}" for n in range(1, settings.QUIET_ACCOUNTS + 1)]
    return hot + [{"account_id": account, "op": "fetch_profile"} for account in quiet]


@dataclass(frozen=True)
class Lanes:
    """How one busy account treated the others (scenario E), from the provider's clock.

    quiet_waits: each quiet account's wait, from its enqueue to its call's start, in seconds.
    hot_floor: the busy account's calls x the hold, over the time they took (1.0: back to
    back). hot_out_of_place: its calls that did not start in enqueue order. writes: status
    writes per finished invocation after REGISTERED (a call needs 3: PENDING, RUNNING, the
    end); reroutes: REROUTED writes per finished invocation.
    """

    quiet_waits: list[float]
    hot_calls: int
    hot_floor: float
    hot_out_of_place: int
    writes: float
    reroutes: float

    def lines(self) -> list[str]:
        order = (
            "in enqueue order"
            if not self.hot_out_of_place
            else f"{self.hot_out_of_place} of them out of enqueue order"
        )
        return [
            f"  quiet accounts: {statistics.median(self.quiet_waits):.2f}s median, "
            f"{max(self.quiet_waits):.2f}s longest, from enqueue to their call",
            f"  {settings.HOT_ACCOUNT} account: {self.hot_calls} calls at {self.hot_floor:.0%} "
            f"of its floor, {order}",
            f"  status writes per finished call: {self.writes:.1f} "
            f"({self.reroutes:.1f} of them REROUTED)",
        ]


# Histories read for the status writes: enough for a figure, bounded for a long backlog.
HISTORIES_READ = 200


def lanes(
    outcome: "Outcome", sent_at: dict[str, float], ids: list[str], tasks: ModuleType
) -> Lanes:
    """Scenario E's figures: what the quiet accounts waited, how the busy one ran."""
    hot = settings.HOT_ACCOUNT
    calls = [c for c in outcome.timeline if not c.get("fenced") and c["end"] is not None]
    first_start: dict[str, float] = {}
    for call in sorted(calls, key=lambda c: c["start"]):
        first_start.setdefault(call["account_id"], call["start"])
    waits = [first_start[a] - sent_at[a] for a in sent_at if a != hot and a in first_start]
    hot_calls = sorted((c for c in calls if c["account_id"] == hot), key=lambda c: c["start"])
    span = max((c["end"] for c in hot_calls), default=0.0) - min(
        (c["start"] for c in hot_calls), default=0.0
    )
    ops = [c["op"] for c in hot_calls]
    out_of_place = sum(1 for op, want in zip(ops, sorted(ops), strict=True) if op != want)
    finished = tasks.app.orchestrator.filter_final(ids)[:HISTORIES_READ]
    histories = [tasks.app.state_backend.get_history(i) for i in finished]
    statuses = [h.status_record.status.value for each in histories for h in each]
    return Lanes(
        quiet_waits=waits or [math.nan],
        hot_calls=len(hot_calls),
        hot_floor=len(hot_calls) * outcome.shape.hold / span if span else math.nan,
        hot_out_of_place=out_of_place,
        writes=(len(statuses) - len(histories)) / max(1, len(histories)),
        reroutes=statuses.count("rerouted") / max(1, len(histories)),
    )


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
    # Only when asked for by name (enqueue.py noisy, sample.py --noisy): not in the article.
    opt_in: bool = False
    # Figures of its own, from the run: E's lanes.
    measure: Callable[["Outcome", dict[str, float], list[str], ModuleType], Lanes] | None = None

    @property
    def heading(self) -> str:
        return f"{self.letter}. {self.key} — {self.title}"

    @property
    def every_call_runs(self) -> bool:
        """Neither drops nor merges: each enqueued call reaches the provider exactly once."""
        return not (self.drops or self.dedupes)

    def ideal_calls(self, shape: Shape) -> Counter[str]:
        """Calls per account in the ideal run: each account once (C, D), or what it is sent."""
        sent = Counter(payload["account_id"] for payload in self.sends(shape))
        return Counter(dict.fromkeys(sent, 1)) if self.once_per_account else sent


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
        Scenario(
            "noisy",
            "E",
            "one busy account beside quiet ones, KEYS",
            "call_keyed",
            sends=noisy_neighbour,
            keyed=True,
            opt_in=True,
            measure=lanes,
        ),
    )
}
# What runs unless a scenario is asked for by name: the article's four.
DEFAULT = [s for s in SCENARIOS.values() if not s.opt_in]


@dataclass
class Outcome:
    scenario: Scenario
    shape: Shape
    enqueued: int
    invocations: int
    statuses: Counter[str]
    calls: int  # every call that reached the provider, fenced ones included
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
    # Calls the provider refused by their fencing token: they reached it, and were not applied.
    fenced: int = 0
    # Invocations left unrun on purpose: Shape.sample waits for only part of a backlog.
    abandoned: int = 0
    lanes: Lanes | None = None

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
        return sum(self.scenario.ideal_calls(self.shape).values()) - self.abandoned

    @property
    def applied(self) -> int:
        """Calls the provider applied: every call but the fenced ones."""
        return self.calls - self.fenced

    @property
    def extra_calls(self) -> int:
        return max(0, self.applied - self.ideal_calls)

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
        # What counts is what the provider applied: a fenced call reached it and was refused.
        applied = self.applied
        if s.every_call_runs and not self.abandoned and applied != self.enqueued:
            problems.append(f"{applied} calls for {self.enqueued} enqueued")
        if s.drops and applied + self.dropped != self.enqueued:
            problems.append(f"{applied} calls + {self.dropped} dropped != {self.enqueued}")
        if s.dedupes and applied != self.invocations:
            problems.append(f"{applied} calls for {self.invocations} invocations")
        return problems


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
        calls=report["calls"],
        collisions=report["collisions"],
        fenced=report["fenced"],
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
        outcome.lanes = scenario.measure(outcome, sent.sent_at, ids, tasks)
    return outcome
