"""Scenario E's figures: what one busy account did to the quiet ones beside it, and how it ran."""

import math
import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING

from demo.scenarios import HOT_ACCOUNT

if TYPE_CHECKING:
    from pynenc import Pynenc


@dataclass(frozen=True)
class Figures:
    """How one busy account treated the others (scenario E), from the provider's clock.

    quiet_waits: each quiet account's wait, from its enqueue to its call's start, in seconds.
    hot_floor: the busy account's calls x the hold / its slots, over the time they took (1.0:
    back to back). hot_out_of_place: its calls that did not start in enqueue order. writes: status
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
        late = self.hot_out_of_place
        order = f"{late} of them out of enqueue order" if late else "in enqueue order"
        return [
            f"  quiet accounts: {statistics.median(self.quiet_waits):.2f}s median, "
            f"{max(self.quiet_waits):.2f}s longest, from enqueue to their call",
            f"  {HOT_ACCOUNT} account: {self.hot_calls} calls at {self.hot_floor:.0%} "
            f"of its floor, {order}",
            f"  status writes per finished call: {self.writes:.1f} "
            f"({self.reroutes:.1f} of them REROUTED)",
        ]


# Histories read for the status writes: enough for a figure, bounded for a long backlog.
HISTORIES_READ = 200


def measure(
    timeline: list[dict],
    hold_per_slot: float,
    sent_at: dict[str, float],
    ids: list[str],
    app: "Pynenc",
) -> Figures:
    """Scenario E's figures, from the provider's calls (timeline), each account's first enqueue
    (sent_at) and the invocations' histories: what the quiet accounts waited, how the busy one
    ran against its floor (a call's hold over its slots, per call)."""
    hot = HOT_ACCOUNT
    unapplied = ("fenced", "replayed", "conflict")
    calls = [c for c in timeline if not any(c.get(k) for k in unapplied) and c["end"] is not None]
    first_start: dict[str, float] = {}
    for call in sorted(calls, key=lambda c: c["start"]):
        first_start.setdefault(call["account_id"], call["start"])
    waits = [first_start[a] - sent_at[a] for a in sent_at if a != hot and a in first_start]
    hot_calls = sorted((c for c in calls if c["account_id"] == hot), key=lambda c: c["start"])
    ends, starts = [c["end"] for c in hot_calls], [c["start"] for c in hot_calls]
    span = max(ends, default=0.0) - min(starts, default=0.0)
    ops = [c["op"] for c in hot_calls]
    out_of_place = sum(1 for op, want in zip(ops, sorted(ops), strict=True) if op != want)
    finished = app.orchestrator.filter_final(ids)[:HISTORIES_READ]
    histories = [app.state_backend.get_history(i) for i in finished]
    statuses = [h.status_record.status.value for each in histories for h in each]
    return Figures(
        quiet_waits=waits or [math.nan],
        hot_calls=len(hot_calls),
        hot_floor=len(hot_calls) * hold_per_slot / span if span else math.nan,
        hot_out_of_place=out_of_place,
        writes=(len(statuses) - len(histories)) / max(1, len(histories)),
        reroutes=statuses.count("rerouted") / max(1, len(histories)),
    )
