"""What a scenario's run came to, and which of its promises did not hold."""

from collections import Counter
from dataclasses import dataclass, field

from demo import tiers
from demo.noisy import Figures
from demo.scenarios import Scenario, Shape

# pynenc's InvocationStatus values, as an Outcome counts them. By value, so that sample.py
# imports pynenc only with tasks.py, once its children are starting.
DROPPED, FAILED = "concurrency_controlled_final", "failed"


@dataclass
class Outcome:
    scenario: Scenario
    shape: Shape
    enqueued: int
    invocations: int
    statuses: Counter[str]
    calls: int  # every call that reached the provider, fenced, replayed and 409 ones included
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
    # Calls the provider refused as beyond the account's rate (a 429): not applied either.
    throttled: int = 0
    # Calls answered from the provider's store for their Idempotency-Key (the same invocation's
    # call applied before), and refused with 409 while that call was in flight: not applied.
    replayed: int = 0
    conflicts: int = 0
    # Invocations left unrun on purpose: Shape.sample waits for only part of a backlog.
    abandoned: int = 0
    figures: Figures | tiers.TierFigures | None = None  # E's figures, or H's

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
        """Calls the provider applied: all but the fenced, throttled, replayed and 409 ones."""
        return self.calls - self.fenced - self.throttled - self.replayed - self.conflicts

    @property
    def peak_in_flight(self) -> int:
        """The most calls of one account the provider had in flight at once (F, G)."""
        return max((a.get("peak_in_flight", 0) for a in self.per_account.values()), default=0)

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
            beyond = f" (beyond {s.slots} in flight)" if s.slots > 1 else ""
            problems.append(f"{self.collisions} collisions{beyond} under running_concurrency=KEYS")
        if self.throttled:
            problems.append(f"{self.throttled} calls throttled: beyond the account's rate")
        # What counts is what the provider applied: a fenced call reached it and was refused,
        # a replayed one was answered from its store.
        applied = self.applied
        if s.every_call_runs and not self.abandoned and applied != self.enqueued:
            problems.append(f"{applied} calls for {self.enqueued} enqueued")
        if s.drops and applied + self.dropped != self.enqueued:
            problems.append(f"{applied} calls + {self.dropped} dropped != {self.enqueued}")
        if s.dedupes and applied != self.invocations:
            problems.append(f"{applied} calls for {self.invocations} invocations")
        return problems
