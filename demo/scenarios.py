"""The four scenarios: what each enqueues, what the provider saw, and what pynenc promised.

enqueue.py runs one or all of them against a running API and worker; sample.py runs them
after starting both. Nothing here starts a process.
"""

import logging
import math
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
from pynenc.invocation.dist_invocation import ReusedInvocation
from pynenc.invocation.status import InvocationStatus

import tasks
from demo import settings

DROPPED = InvocationStatus.CONCURRENCY_CONTROLLED_FINAL
# Up to this many accounts, a summary lists each; past it, the ones worth a look, at most
# LISTED_AT_MOST of them, and one line for the rest.
ACCOUNTS_LISTED = 12
LISTED_AT_MOST = 8
# This process only enqueues and watches: its own INFO lines would bury the summaries.
tasks.app.logger.setLevel(logging.WARNING)


class ProviderUnreachable(ConnectionError):
    """The API is not answering where we looked."""


@dataclass(frozen=True)
class Scenario:
    key: str
    letter: str
    title: str
    task_name: str
    # What the ideal run calls per account: every op (A, B) or just once (C, D).
    once_per_account: bool

    @property
    def heading(self) -> str:
        return f"{self.letter}. {self.key} — {self.title}"


SCENARIOS: dict[str, Scenario] = {
    s.key: s
    for s in (
        Scenario("unsafe", "A", "no concurrency control", "call_unsafe", False),
        Scenario("keyed", "B", "running_concurrency=KEYS, reroute=True", "call_keyed", False),
        Scenario("drop", "C", "running_concurrency=KEYS, reroute=False", "call_keyed_drop", True),
        Scenario("dedupe", "D", "registration + running KEYS", "refresh_once", True),
    )
}


@dataclass(frozen=True)
class Shape:
    """How big a run is: the article's defaults, or scaled up with the CLI's knobs."""

    accounts: int = len(settings.ACCOUNTS)
    ops: int = len(settings.OPS)
    hold: float = settings.HOLD_SECONDS
    refreshes: int = settings.REFRESHES_PER_ACCOUNT
    workers: int = 1
    threads: int = settings.MAX_THREADS

    def payloads(self, scenario: Scenario) -> list[dict[str, str]]:
        """Account by account, as the article does: every op for acme, then for globex, ...

        D is a burst of refreshes per account, as a noisy event bus fires them.
        """
        accounts = settings.account_names(self.accounts)
        if scenario.key == "dedupe":
            return [{"account_id": a} for a in accounts for _ in range(self.refreshes)]
        return [{"account_id": a, "op": op} for a in accounts for op in settings.op_names(self.ops)]

    def floor(self, scenario: Scenario) -> float:
        """The least time the provider could take: hold x the longest chain of calls."""
        slots = self.threads * self.workers
        if scenario.once_per_account:
            return math.ceil(self.accounts / slots) * self.hold
        waves = math.ceil(self.accounts * self.ops / slots)
        if scenario.key == "unsafe":
            return waves * self.hold
        return max(self.ops, waves) * self.hold


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
        return self.statuses[DROPPED.value]

    @property
    def deduped(self) -> int:
        return self.enqueued - self.invocations

    @property
    def failed(self) -> int:
        return self.statuses[InvocationStatus.FAILED.value]

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
        s, problems = self.scenario.key, []
        if self.unfinished:
            shown = ", ".join(f"{i} {st}" for i, st in list(self.unfinished.items())[:5])
            problems.append(f"{len(self.unfinished)} invocations never finished ({shown})")
        if self.failed:
            problems.append(f"{self.failed} invocations failed")
        if s in ("keyed", "drop", "dedupe") and self.collisions:
            problems.append(f"{self.collisions} collisions under running_concurrency=KEYS")
        if s in ("unsafe", "keyed") and self.calls != self.enqueued:
            problems.append(f"{self.calls} calls for {self.enqueued} enqueued")
        if s == "drop" and self.calls + self.dropped != self.enqueued:
            problems.append(f"{self.calls} calls + {self.dropped} dropped != {self.enqueued}")
        if s == "dedupe" and self.calls != self.invocations:
            problems.append(f"{self.calls} calls for {self.invocations} invocations")
        return problems

    def summary(self) -> str:
        parts = [f"{self.calls} calls"]
        if self.dropped:
            parts[0] += f" ({self.dropped} dropped)"
        if self.deduped:
            parts[0] += f" ({self.deduped} deduped)"
        parts.append(f"{self.collisions} collisions")
        head = f"  {self.enqueued} enqueued -> {', '.join(parts)}, {self.elapsed:.2f}s"
        head += f" (floor {self.floor:.2f}s, {self.floor / self.elapsed:.0%})"
        lines = ["", f"=== {self.scenario.heading} ===", head, *self._account_lines()]
        if self.late:
            lines.append(f"  note: {len(self.late)} late, ran after the first for its key:")
            lines += [f"    {why}" for why in self.late[:LISTED_AT_MOST]]
            if len(self.late) > LISTED_AT_MOST:
                lines.append(f"    ... and {len(self.late) - LISTED_AT_MOST} more")
        lines += [f"  GUARANTEE BROKEN: {p}" for p in self.broken()]
        if self.unfinished:
            lines.append(f"  {unfinished_hint(self.unfinished)}")
        return "\n".join(lines)

    def _account_lines(self) -> list[str]:
        """One line per account; past ACCOUNTS_LISTED, only those worth a look, then the rest."""

        def line(name: str, acc: dict[str, int]) -> str:
            mark = " X" if acc["collisions"] else "OK"
            return f"  {mark} {name:<8} calls={acc['calls']}  collisions={acc['collisions']}"

        accounts = self.per_account.items()
        if len(self.per_account) <= ACCOUNTS_LISTED:
            return [line(name, acc) for name, acc in accounts]
        # Worth a look: a collision, or another number of calls than the ideal run makes
        # (a late or extra call, a drop that did not happen, a call that never came).
        each = 1 if self.scenario.once_per_account else self.shape.ops
        notable = [(n, a) for n, a in accounts if a["collisions"] or a["calls"] != each]
        lines = [line(name, acc) for name, acc in notable[:LISTED_AT_MOST]]
        if len(notable) > LISTED_AT_MOST:
            lines.append(f"  ... and {len(notable) - LISTED_AT_MOST} more accounts like these")
        if rest := len(self.per_account) - len(notable):
            lines.append(f"  OK {rest} more accounts: calls={each}, collisions=0")
        return lines


class Provider:
    """The demo's oracle, over HTTP."""

    def __init__(self, base_url: str | None = None) -> None:
        self.base_url = base_url or settings.api_url()
        self.http = httpx.Client(base_url=self.base_url, timeout=10.0)

    def _request(self, method: str, path: str, **params: object) -> dict:
        try:
            r = self.http.request(method, path, params=params or None)
        except httpx.TransportError as exc:
            raise ProviderUnreachable(
                f"no API answers at {self.base_url} ({type(exc).__name__}); start it with: "
                f"uv run uvicorn api_server:app --port {settings.get('DEMO_API_PORT')}"
            ) from exc
        r.raise_for_status()
        return r.json()

    def reset(self, label: str, hold: float) -> None:
        self._request("POST", "/reset", label=label, hold=hold)

    def report(self) -> dict:
        return self._request("GET", "/report")

    def timeline(self) -> list[dict[str, object]]:
        return self._request("GET", "/timeline")["calls"]

    def health(self) -> dict:
        return self._request("GET", "/health")


def status_of(invocation_id: str) -> InvocationStatus:
    return tasks.app.orchestrator.get_invocation_status(invocation_id)


def enqueue(scenario: Scenario, shape: Shape) -> tuple[list[str], list[str]]:
    """Send every payload; return the distinct invocation ids and the late duplicates."""
    task = getattr(tasks, scenario.task_name)
    ids: list[str] = []
    first_for: dict[str, str] = {}
    late: list[str] = []
    for payload in shape.payloads(scenario):
        inv = task(**payload)
        if isinstance(inv, ReusedInvocation):
            continue
        account = payload["account_id"]
        if scenario.key == "dedupe" and account in first_for:
            # Registration dedupe only sees REGISTERED invocations: say why this one is new.
            earlier = status_of(first_for[account]).value
            late.append(f"{account}: new invocation, the earlier one was already {earlier}")
        first_for.setdefault(account, inv.invocation_id)
        ids.append(inv.invocation_id)
    return ids, late


def wait_finished(
    ids: list[str],
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
        time.sleep(0.02)


def unfinished_hint(unfinished: dict[str, str]) -> str:
    """Why work is unfinished at the deadline, and what to do about it."""
    if all(status == InvocationStatus.REGISTERED.value for status in unfinished.values()):
        return (
            f"no runner picked the work up ({len(unfinished)} invocations still registered). "
            "Start one with: uv run pynenc --app tasks.app runner start"
        )
    counts = Counter(unfinished.values())
    shown = ", ".join(f"{n} {status}" for status, n in counts.most_common())
    return f"{len(unfinished)} invocations did not finish in time: {shown}"


def run(
    scenario: Scenario,
    shape: Shape,
    provider: Provider,
    timeout: float,
    check: Callable[[], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Outcome:
    payloads = shape.payloads(scenario)
    provider.reset(scenario.heading, shape.hold)
    started, began = time.monotonic(), time.time()
    ids, late = enqueue(scenario, shape)
    wait_finished(ids, timeout, check, progress)
    elapsed = time.monotonic() - started
    statuses = {inv_id: status_of(inv_id) for inv_id in ids}
    report = provider.report()
    timeline = provider.timeline()
    if scenario.key == "drop":
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
        per_account={n: a for n, a in report["accounts"].items()},
        elapsed=elapsed,
        timeline=timeline,
        window=(began, time.time()),
        late=late,
        unfinished={i: s.value for i, s in statuses.items() if not s.is_final()},
    )


def one_line(outcomes: list[Outcome]) -> str:
    """One round in a line: letter, calls/collisions, and anything unusual."""
    parts = []
    for o in outcomes:
        text = f"{o.scenario.letter} {o.calls}/{o.collisions}"
        if o.late:
            text += f" late={len(o.late)}"
        if o.unfinished:
            text += f" unfinished={len(o.unfinished)}"
        parts.append(text + ("" if not o.broken() else " BROKEN"))
    return "  ".join(parts)


COLUMNS = ("calls", "collisions", "extra_calls", "dropped", "deduped", "late", "unfinished")


def _value(outcome: Outcome, column: str) -> int:
    value = getattr(outcome, column)
    return len(value) if isinstance(value, list | dict) else value


def distribution(outcomes: list[Outcome]) -> str:
    """Per scenario and measure: min / typical (median) / max over the rounds."""
    rounds = max(Counter(o.scenario.key for o in outcomes).values())
    header = f"{'scenario':<10}" + "".join(f"{c.replace('_calls', ''):>14}" for c in COLUMNS)
    lines = ["", f"=== {rounds} rounds: min / typical / max ===", header]
    for scenario in SCENARIOS.values():
        mine = [o for o in outcomes if o.scenario is scenario]
        if not mine:
            continue
        cells = []
        for column in COLUMNS:
            values = [_value(o, column) for o in mine]
            cells.append(f"{min(values)}/{statistics.median_low(values)}/{max(values)}")
        broken = sum(1 for o in mine if o.broken())
        note = f"  broken in {broken} of {len(mine)}" if broken else ""
        lines.append(
            f"{scenario.letter}. {scenario.key:<7}" + "".join(f"{c:>14}" for c in cells) + note
        )
    keyed = [o for o in outcomes if o.scenario.key != "unsafe"]
    by_letter = ", ".join(
        f"{s.letter} {sum(o.collisions for o in keyed if o.scenario is s)}"
        for s in SCENARIOS.values()
        if s.key != "unsafe"
    )
    lines.append(
        f"totals: {sum(o.collisions for o in keyed)} collisions under KEYS ({by_letter}), "
        f"{sum(o.extra_calls for o in outcomes)} extra calls, "
        f"{sum(len(o.late) for o in outcomes)} late, "
        f"{sum(len(o.unfinished) for o in outcomes)} never finished"
    )
    return "\n".join(lines)


def efficiency(outcomes: list[Outcome]) -> str:
    """Per scenario: median elapsed against the physical floor."""
    lines = [f"{'scenario':<11}{'median':>9}{'floor':>9}{'efficiency':>12}{'runs':>6}"]
    for scenario in SCENARIOS.values():
        mine = [o for o in outcomes if o.scenario is scenario]
        if not mine:
            continue
        median = statistics.median(o.elapsed for o in mine)
        floor = mine[0].floor
        lines.append(
            f"{scenario.letter}. {scenario.key:<8}{median:>8.2f}s{floor:>8.2f}s"
            f"{floor / median:>12.0%}{len(mine):>6}"
        )
    return "\n".join(lines)


def purge_backend() -> None:
    """Forget this app's invocations in a Redis that outlives the run (REDIS_URL)."""
    tasks.app.purge()


def compare(by_runner: dict[str, list[Outcome]]) -> str:
    """Median elapsed and efficiency per scenario and shape, runner against runner."""
    names = list(by_runner)
    first, last = names[0], names[-1]

    def medians(outcomes: list[Outcome]) -> dict[tuple, tuple[float, float]]:
        grouped: dict[tuple, list[Outcome]] = {}
        for o in outcomes:
            grouped.setdefault((o.scenario.key, o.shape), []).append(o)
        return {
            key: (statistics.median(o.elapsed for o in group), group[0].floor)
            for key, group in grouped.items()
        }

    table = {name: medians(outcomes) for name, outcomes in by_runner.items()}
    header = f"{'scenario':<22}" + "".join(f"{n:>16}" for n in names) + f"{last + '/' + first:>16}"
    lines = ["", f"=== {' vs '.join(names)}: median elapsed (efficiency) ===", header]
    for key in table[first]:
        scenario, shape = SCENARIOS[key[0]], key[1]
        label = f"{scenario.letter}. {scenario.key}"
        if (shape.accounts, shape.ops, shape.hold) != (Shape.accounts, Shape.ops, Shape.hold):
            label += f", {shape.accounts}x{shape.ops}"  # not the article's size
        cells = []
        for name in names:
            median, floor = table[name].get(key, (math.nan, math.nan))
            cells.append(f"{median:.2f}s ({floor / median:.0%})")
        ratio = table[last][key][0] / table[first][key][0] if key in table[last] else math.nan
        lines.append(f"{label:<22}" + "".join(f"{c:>16}" for c in cells) + f"{ratio:>16.2f}")
    return "\n".join(lines)
