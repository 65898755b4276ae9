"""The scenarios: what each enqueues and what it promises.

A scenario is one entry in SCENARIOS plus its task in tasks.py: the entry says what it sends
and what it promises, and nothing else asks which scenario it is. demo/run.py runs one,
demo/outcome.py judges its run against the promises, and demo/show.py shows it.
"""

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from demo import settings


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
        if scenario.limited:
            order, taken = [], Counter()
            for payload in self.payloads(scenario):  # with a sample: each account's first ones
                account = payload["account_id"]
                if self.sample is None or taken[account] < self.sample:
                    order.append(account)
                    taken[account] += 1
            return limited_floor(order, scenario, self.hold, self.threads * self.workers)
        waves = math.ceil(sum(each.values()) / (self.threads * self.workers))
        return (max(max(each.values()), waves) if scenario.keyed else waves) * self.hold


def every_op(shape: Shape, factor: int = 1) -> list[dict[str, str]]:
    """Account by account, as the article does: every op for acme, then for globex, ..."""
    ops = settings.op_names(shape.ops * factor)
    return [
        {"account_id": a, "op": op} for a in settings.account_names(shape.accounts) for op in ops
    ]


def limited_ops(shape: Shape) -> list[dict[str, str]]:
    """F and G: the same, twice the ops (8 by default)."""
    return every_op(shape, settings.LIMITED_OPS_FACTOR)


def limited_floor(order: list[str], scenario: "Scenario", hold: float, threads: int) -> float:
    """F's and G's floor: the provider's quota played out with no overhead at all. Calls go
    in enqueue order, each the moment a thread, its account's slot and its account's rate (at
    most `rate` starts in any `per` seconds, as the provider counts) allow it. At the article's
    size it is the least time possible; with more accounts than threads, a dispatcher taking
    calls out of enqueue order could pack the threads tighter."""
    eps = 1e-9
    pending, running, starts = list(order), [], {a: [] for a in order}
    t, last_end = 0.0, 0.0
    while pending:
        running = [(end, a) for end, a in running if end > t + eps]
        waiting = []
        for account in pending:
            busy = sum(1 for _, a in running if a == account)
            recent = [x for x in starts[account] if x > t - scenario.per + eps]
            rated = scenario.rate is not None and len(recent) >= scenario.rate
            if len(running) < threads and busy < scenario.slots and not rated:
                running.append((t + hold, account))
                starts[account].append(t)
                last_end = max(last_end, t + hold)
            else:
                waiting.append(account)
        pending = waiting
        events = [end for end, _ in running]
        for account in set(pending) if scenario.rate is not None else ():
            recent = sorted(x for x in starts[account] if x > t - scenario.per + eps)
            if len(recent) >= scenario.rate:
                events.append(recent[len(recent) - scenario.rate] + scenario.per)
        if pending:
            t = min(e for e in events if e > t + eps)
    return last_end


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
class Scenario:
    """One scenario: its task, what it sends, and what it promises."""

    key: str
    letter: str
    title: str
    task: str  # the name of its task in tasks.py
    sends: Callable[[Shape], list[dict[str, str]]] = every_op
    # running_concurrency=KEYS: never two calls in flight for one account, so a collision
    # breaks it, and one account's calls run in a row (its floor).
    keyed: bool = False
    # reroute=False: a call picked up while its account is busy ends dropped, never run, so
    # calls + dropped = enqueued; a call picked up once the account was free again is late.
    drops: bool = False
    # registration_concurrency=KEYS: a duplicate merges into the invocation still queued, so
    # each invocation is called once; one made after the first was picked up is late.
    dedupes: bool = False
    # Figures of its own, from the run: E's (demo/neighbours.py).
    measure: bool = False
    # Each account's quota at the provider, as its task declares it (keyclaim.limit): up to
    # `slots` calls in flight, and at most `rate` per `per` seconds (None: no rate).
    slots: int = 1
    rate: int | None = None
    per: float = 1.0

    @property
    def heading(self) -> str:
        return f"{self.letter}. {self.key} — {self.title}"

    @property
    def limited(self) -> bool:
        """Beyond one call per account (F, G): its figures add peak in flight and throttled."""
        return self.slots > 1 or self.rate is not None

    @property
    def every_call_runs(self) -> bool:
        """Neither drops nor merges: each enqueued call reaches the provider exactly once."""
        return not (self.drops or self.dedupes)

    def ideal_calls(self, shape: Shape) -> Counter[str]:
        """Calls per account in the ideal run: what it is sent (A, B), or, where calls are
        dropped or merged (C, D), each account once."""
        sent = Counter(payload["account_id"] for payload in self.sends(shape))
        return sent if self.every_call_runs else Counter(dict.fromkeys(sent, 1))


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
            keyed=True,
            drops=True,
        ),
        Scenario(
            "dedupe",
            "D",
            "registration + running KEYS",
            "refresh_once",
            sends=refresh_bursts,
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
            measure=True,
        ),
        Scenario(
            "slots",
            "F",
            f"up to {settings.SLOTS} in flight per account (keyclaim.limit)",
            "call_slots",
            sends=limited_ops,
            keyed=True,
            slots=settings.SLOTS,
        ),
        Scenario(
            "rate",
            "G",
            f"at most {settings.RATE} calls per {settings.RATE_PER:g}s per account, "
            f"{settings.SLOTS} in flight",
            "call_rated",
            sends=limited_ops,
            keyed=True,
            slots=settings.SLOTS,
            rate=settings.RATE,
            per=settings.RATE_PER,
        ),
    )
}
# What runs unless a scenario is asked for by name (enqueue.py noisy, sample.py --noisy, ...):
# the article's four.
DEFAULT = [SCENARIOS[key] for key in ("unsafe", "keyed", "drop", "dedupe")]
# Beyond the article, with the claim (sample.py --limits, enqueue.py limits).
LIMITED = [s for s in SCENARIOS.values() if s.limited]
