"""What a scenario is: the task it calls, what it sends, what it promises, and its floor.

The table of scenarios is enqueue.py's, as in the article: each entry hands its task here. A
scenario's promises follow from the task's own settings (running_concurrency, reroute,
registration_concurrency, keyclaim.limit's slots and rate): nothing asks which scenario it is.
"""

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import keyclaim
from demo import tiers as tiers_of

ACCOUNTS = ("acme", "globex", "initech")
OPS = ("fetch_profile", "list_invoices", "refresh_usage", "update_metadata")
REFRESHES_PER_ACCOUNT = 8
HOLD_SECONDS = 0.4
# Scenario E: one account with a backlog of calls, then quiet accounts with one call each.
HOT_ACCOUNT, QUIET_ACCOUNTS, BACKLOG = "hot", 10, 20
MAX_BACKLOG = 100_000
LIMITED_OPS_FACTOR = 2  # F and G send twice the ops per account: 8 by default
THREADS = 8  # a worker's threads, unless the app says (Shape.threads)


def _keys(mode: object) -> bool:
    """Whether a task's concurrency setting is KEYS. pynenc is imported here, once a task exists,
    not with this module: the provider imports it for its hold, and boots 0.5 s sooner."""
    from pynenc.conf.config_task import ConcurrencyControlType

    return mode == ConcurrencyControlType.KEYS


def account_names(count: int) -> list[str]:
    """The article's three accounts, then numbered ones when more are asked for."""
    return [*ACCOUNTS[:count], *(f"acct{i:03d}" for i in range(len(ACCOUNTS), count))]


@dataclass(frozen=True)
class Shape:
    """How big a run is: the article's defaults, or scaled up with the CLI's knobs."""

    accounts: int = len(ACCOUNTS)
    ops: int = len(OPS)
    hold: float = HOLD_SECONDS
    refreshes: int = REFRESHES_PER_ACCOUNT
    workers: int = 1
    threads: int = THREADS
    backlog: int = BACKLOG  # E: the busy account's calls
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
    count = shape.ops * factor  # the article's four ops, then numbered ones
    ops = [*OPS[:count], *(f"op{i:02d}" for i in range(len(OPS), count))]
    return [{"account_id": a, "op": op} for a in account_names(shape.accounts) for op in ops]


def limited_ops(shape: Shape) -> list[dict[str, str]]:
    """F and G: the same, twice the ops (8 by default)."""
    return every_op(shape, LIMITED_OPS_FACTOR)


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
            if len(running) < threads and busy < scenario.slots_for(account) and not rated:
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
    accounts = account_names(shape.accounts)
    return [{"account_id": a} for a in accounts for _ in range(shape.refreshes)]


def noisy_neighbour(shape: Shape) -> list[dict[str, str]]:
    """One account's backlog (its ops numbered in enqueue order), then the quiet accounts'
    one call each, enqueued right after it."""
    hot = [{"account_id": HOT_ACCOUNT, "op": f"op{n:05d}"} for n in range(shape.backlog)]
    quiet = [f"quiet{n:02d}" for n in range(1, QUIET_ACCOUNTS + 1)]
    return hot + [{"account_id": account, "op": "fetch_profile"} for account in quiet]


@dataclass(frozen=True)
class Scenario:
    """One scenario: its letter and name, its task and what it sends; what it promises follows
    from the task's settings. `measure`: figures of its own, from the run (E's: demo/noisy.py).
    """

    letter: str
    key: str
    title: str
    task: Any = field(compare=False)  # a pynenc task: calling it enqueues one invocation
    sends: Callable[[Shape], list[dict[str, str]]] = field(default=every_op, compare=False)
    measure: bool = False
    # H: its task's rule (each account's slots), and an operator who changes two mid-run.
    tiers: Callable[[str], int] | None = field(default=None, compare=False)

    @property
    def heading(self) -> str:
        return f"{self.letter}. {self.key} — {self.title}"

    @property
    def label(self) -> str:
        return f"{self.letter}. {self.key}"

    @property
    def keyed(self) -> bool:
        """running_concurrency=KEYS: never two calls in flight for one account (or `slots`), so a
        collision breaks it, and one account's calls run in a row (its floor)."""
        return _keys(self.task.conf.running_concurrency)

    @property
    def drops(self) -> bool:
        """reroute=False: a call picked up while its account is busy ends dropped, never run, so
        calls + dropped = enqueued; a call picked up once the account was free again is late."""
        return self.keyed and not self.task.conf.reroute_on_concurrency_control

    @property
    def dedupes(self) -> bool:
        """registration_concurrency=KEYS: a duplicate merges into the invocation still queued,
        so each invocation is called once; one made after the first was picked up is late."""
        return _keys(self.task.conf.registration_concurrency)

    # Its task's keyclaim.limit: up to `slots` calls in flight per account, at most `rate`
    # calls per `per` seconds (None: no rate); one call per account without one.
    @property
    def slots(self) -> int:
        return keyclaim.inspect.limit_of(self.task).slots

    def slots_for(self, account: str) -> int:
        return self.slots if self.tiers is None else self.tiers(account)

    @property
    def rate(self) -> int | None:
        return keyclaim.inspect.limit_of(self.task).rate

    @property
    def per(self) -> float:
        return keyclaim.inspect.limit_of(self.task).per

    @property
    def quota(self) -> dict[str, float]:
        """Each account's quota at the provider, as its task declares it: slots, rate, per."""
        rate = {} if self.rate is None else {"rate": self.rate, "per": self.per}
        tiers = {} if self.tiers is None else {"accounts": tiers_of.starting(self.tiers)}
        return ({"slots": self.slots} if self.slots > 1 else {}) | rate | tiers

    @property
    def limited(self) -> bool:
        """Beyond one call per account (F, G): its figures add peak in flight and throttled."""
        return self.slots > 1 or self.rate is not None or self.tiers is not None

    @property
    def every_call_runs(self) -> bool:
        """Neither drops nor merges: each enqueued call reaches the provider exactly once."""
        return not (self.drops or self.dedupes)

    def ideal_calls(self, shape: Shape) -> Counter[str]:
        """Calls per account in the ideal run: what it is sent (A, B), or, where calls are
        dropped or merged (C, D), each account once."""
        sent = Counter(payload["account_id"] for payload in self.sends(shape))
        return sent if self.every_call_runs else Counter(dict.fromkeys(sent, 1))
