"""What one claim decides, given what it read atomically: no store, no clock, no I/O.

Each backend reads the invocation's status and its key's holder inside one step, asks `decide`,
and writes the decision in the same step. Written against pynenc 0.3.1 and 0.4.0's statuses
and transitions; retired with keyclaim.orchestrator, whose upstream change it is part of.
"""

import enum
from dataclasses import dataclass, field

from pynenc.invocation.status import (
    InvocationStatus,
    InvocationStatusRecord,
    status_record_transition,
)

S = InvocationStatus
HELD = (S.PENDING, S.RUNNING)
# A holder in one of these moves no further by itself: it ended, or a process died between two
# of pynenc's writes (KILLED then REROUTED; a recovery status then REROUTED).
UNMOVING = frozenset({*S.get_final_statuses(), S.KILLED, S.RUNNING_RECOVERY, S.PENDING_RECOVERY})


class Verdict(enum.Enum):
    RUN = "claimed: now PENDING, the key's holder"
    PARK = "key busy: waits at the end of its line, off the queue"
    DROP = "key busy: CONCURRENCY_CONTROLLED_FINAL"
    LEAVE = "key busy: left as it is (the blocking path reads it from elsewhere)"
    REQUEUE = "not decided (Redis kept changing under it): back to the queue unchanged"
    WAIT = "its key's rate is spent: holds its slot, off the queue, until the window frees"
    SKIP = "not available for run (another runner has it, or it is final)"


@dataclass
class Holder:
    """The invocation holding a key: its status, and when its runner last beat (on the store's
    clock; None when it never beat in this boot)."""

    invocation_id: str
    record: InvocationStatusRecord
    heartbeat: float | None
    slot: int = 0  # which of the key's slots it holds (0 with one slot)

    def silent_since(self, alive_since: float) -> bool:
        """Pending or running under a runner that has not beaten since alive_since."""
        if self.record.status not in HELD:
            return False  # queued, or between two statuses: it is not waiting on a runner
        # No beat at all (a store that lost its beats, say): not silent until a window later.
        return self.heartbeat is not None and self.heartbeat < alive_since


@dataclass
class Decision:
    verdict: Verdict
    # Status records to write in the same step, in order: (invocation id, record).
    writes: list[tuple[str, InvocationStatusRecord]] = field(default_factory=list)
    # Silent holders, recovered: each keeps its slot and is queued again in the same step.
    recovered: list[str] = field(default_factory=list)
    takes_key: bool = False  # a slot of the key was free: this invocation holds it now
    slot: int = 0  # with RUN or WAIT: the slot it holds
    token: int | None = None  # with RUN on a key: the fencing token issued (per slot)
    due: float | None = None  # with WAIT: when the key's rate window frees (store's clock)
    due_in: float | None = None  # the same, in seconds from the step (any process's clock)
    # With RUN under a rate: where its admission is kept, its name there, and the rate's window
    # (dated again as the call starts: keyclaim.orchestrator).
    admitted: tuple[str, str, float] | None = None


def rate_free_at(
    admitted: list[tuple[str, float]],
    holders: list[Holder],
    alive_since: float,
    rate: int,
    window: float,
    now: float,
) -> float | None:
    """None when a key's rate admits a call now; else when its window frees. admitted: the
    window's admissions, (invocation id, when). A holder claimed but not started (PENDING, its
    runner alive) reaches the provider only when it starts, however long after its claim: it
    counts as admitted now, its admission aged out of the window or not, until its RUNNING
    dates it again (keyclaim.orchestrator)."""
    unstarted = {
        h.invocation_id
        for h in holders
        if h.record.status is S.PENDING and not h.silent_since(alive_since)
    }
    times = sorted([at for inv, at in admitted if inv not in unstarted] + [now] * len(unstarted))
    return None if len(times) < rate else times[len(times) - rate] + window


def recovery(record: InvocationStatusRecord, runner_id: str) -> list[InvocationStatusRecord]:
    """pynenc's recovery of a PENDING or RUNNING invocation whose runner went silent: through
    PENDING_RECOVERY or RUNNING_RECOVERY to REROUTED, in one step, to be queued again."""
    via = S.RUNNING_RECOVERY if record.status is S.RUNNING else S.PENDING_RECOVERY
    recovering = status_record_transition(record, via, runner_id)
    return [recovering, status_record_transition(recovering, S.REROUTED, runner_id)]


def free_slot(holders: list[Holder], slots: int) -> int:
    """The lowest slot of the key no holder has."""
    taken = {h.slot for h in holders}
    return next(slot for slot in range(slots + len(taken)) if slot not in taken)


def decide(
    invocation_id: str,
    current: InvocationStatusRecord,
    holder: Holder | list[Holder] | None,
    runner_id: str,
    alive_since: float,
    waits: bool,
    busy: Verdict = Verdict.PARK,
    slots: int = 1,
    free_at: float | None = None,
) -> Decision:
    """What to write, given the invocation's status and its key's holders, read atomically.

    holder: the key's holders (one Holder, or a list); None: a free key, or no running control.
    alive_since: on the store's clock, the oldest heartbeat of a live runner.
    waits: a blocked call of this task waits in its line (reroute) rather than being dropped.
    busy: what a busy key means here: PARK (or drop, as the task says) or LEAVE.
    slots: how many holders the key may have (the task's keyclaim.limit; 1: one call per key).
    free_at: None when the key's rate admits a call now; else when its window frees.
    """
    if not current.status.is_available_for_run():
        return Decision(Verdict.SKIP)
    holders = [] if holder is None else holder if isinstance(holder, list) else [holder]
    mine = next((h for h in holders if h.invocation_id == invocation_id), None)
    if mine is not None or len(holders) < slots:
        slot = mine.slot if mine is not None else free_slot(holders, slots)
        if free_at is not None:  # a slot, but not the rate: it holds the slot and waits
            return Decision(Verdict.WAIT, takes_key=mine is None, slot=slot, due=free_at)
        new = status_record_transition(current, S.PENDING, runner_id)
        return Decision(Verdict.RUN, [(invocation_id, new)], takes_key=mine is None, slot=slot)
    decision = Decision(busy)
    # A holder whose runner stopped beating is recovered as pynenc's recovery does: it keeps its
    # slot and is queued again (it never finished, and it came first).
    for each in (h for h in holders if h.silent_since(alive_since)):
        decision.writes += [(each.invocation_id, r) for r in recovery(each.record, runner_id)]
        decision.recovered.append(each.invocation_id)
    if busy is Verdict.LEAVE:
        return decision
    if not waits and current.status.can_transition_to(S.CONCURRENCY_CONTROLLED_FINAL):
        dropped = status_record_transition(current, S.CONCURRENCY_CONTROLLED_FINAL, runner_id)
        decision.verdict = Verdict.DROP
        decision.writes.append((invocation_id, dropped))
    # Otherwise it waits: a rerouting task's call, and a drop pynenc forbids (a REROUTED or
    # RETRY invocation can only become PENDING) waits too, rather than going round again.
    return decision
