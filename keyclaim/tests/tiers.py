"""A limit per key from a rule, and an operator's override, checked step by step in-process.

Each check enqueues calls of claimapp's tasks, claims them with pynenc's own claiming loop in
orchestrators of their own (two workers' stand-ins), and counts what each step admitted. The
SQLite tests call them (test_overrides.py); on Redis, this script runs them all and prints
one JSON object: python tiers.py URL.
"""

import json
import sys
from collections.abc import Callable
from typing import Any

from pynenc.invocation.status import InvocationStatus as S

from keyclaim import overrides

Claimer = Callable[[], tuple[Any, Any]]  # a new orchestrator and its live runner context


def taken(claimer: tuple[Any, Any], most: int = 8) -> list[str]:
    """Every call a worker may start now (up to most): claimed by one pass of pynenc's loop."""
    orchestrator, ctx = claimer
    return [i.invocation_id for i in orchestrator.get_invocations_to_run(most, ctx)]


def set_status(claimer: tuple[Any, Any], ids: list[str], status: S) -> None:
    orchestrator, ctx = claimer
    for invocation_id in ids:
        orchestrator.set_invocation_status(invocation_id, status, ctx)


def rule_per_tier(app: Any, tasks: Any, new: Claimer) -> dict[str, Any]:
    """Four calls for a gold account and four for a plain one: three and one start."""
    for account in ("gold-a", "plain-a"):
        for n in range(4):
            tasks.call_tiered(account, f"op{n}")
    return {"started": len(taken(new())), "waiting": app.orchestrator.waiting()}


def raise_starts_waiting_calls(app: Any, tasks: Any, new: Claimer) -> dict[str, Any]:
    """One slot, four calls: one holds, three wait. Raised to three: two start at once."""
    worker = new()
    for n in range(4):
        tasks.call_keyed("plain-b", f"op{n}")
    first = taken(worker)
    set_status(worker, first, S.RUNNING)
    started = overrides.set_limit(app, tasks.call_keyed, {"account_id": "plain-b"}, slots=3)
    return {
        "first": len(first),
        "started": started,
        "then": len(taken(new())),
        "waiting": app.orchestrator.waiting(),
    }


def lower_admits_nothing_until_below(app: Any, tasks: Any, new: Claimer) -> dict[str, Any]:
    """A gold account (three slots) with three calls in flight, one holding a slot not
    started, and two in line. Lowered to one: the unstarted one gives its slot back, nothing
    starts while two, then one, are in flight; then one at a time."""
    one, two = new(), new()
    ids = [tasks.call_tiered("gold-b", f"op{n}").invocation_id for n in range(5)]
    running = taken(one, 2)  # the third holder is left unclaimed: queued, not started
    set_status(one, running, S.RUNNING)
    overrides.set_limit(app, tasks.call_tiered, {"account_id": "gold-b"}, slots=1)
    after = [len(taken(two))]
    for invocation_id in running:
        set_status(one, [invocation_id], S.SUCCESS)
        after.append(len(started := taken(two)))
    in_flight = started
    for _ in range(3):  # one at a time from here: each ends, the next starts
        set_status(two, in_flight, S.RUNNING)
        set_status(two, in_flight, S.SUCCESS)
        in_flight = taken(two)
        after.append(len(in_flight))
    statuses = [app.orchestrator.get_invocation_status(i).value for i in ids]
    return {"after": after, "statuses": statuses, "waiting": app.orchestrator.waiting()}


def clear_restores_the_tasks_own(app: Any, tasks: Any, new: Claimer) -> dict[str, Any]:
    """One slot raised to two before three calls: two hold. Cleared: one slot again, the
    second gives its slot back, and one starts."""
    key = {"account_id": "plain-c"}
    overrides.set_limit(app, tasks.call_keyed, key, slots=2)
    for n in range(3):
        tasks.call_keyed("plain-c", f"op{n}")
    overrides.clear_limit(app, tasks.call_keyed, key)
    return {
        "started": len(taken(new())),
        "waiting": app.orchestrator.waiting(),
        "kept": overrides.read(app),
    }


def two_workers_never_exceed(app: Any, tasks: Any, new: Claimer) -> dict[str, Any]:
    """Two workers take turns on a gold account's calls, a producer enqueues one more each
    turn, and an operator lowers the account to one, raises it to two, and clears it (three
    again). Each start is judged as the provider judges it, against the limit in force: by
    how many others are in flight."""
    workers, limit, flight, worst, key = [new(), new()], 3, [], [], {"account_id": "gold-c"}
    ids = [tasks.call_tiered("gold-c", f"op{n}").invocation_id for n in range(4)]
    changes = {2: 1, 6: 2, 9: None}  # at these turns the operator sets (None: clears)
    turn = 0
    while turn < 12 or flight or app.orchestrator.waiting():
        worker = workers[turn % 2]
        if turn in changes:
            slots = changes[turn]
            if slots is None:
                overrides.clear_limit(app, tasks.call_tiered, key)
            else:
                overrides.set_limit(app, tasks.call_tiered, key, slots=slots)
            limit = 3 if slots is None else slots
        if turn < 12:
            ids.append(tasks.call_tiered("gold-c", f"more{turn}").invocation_id)
        for invocation_id in taken(worker):
            worst.append(len(flight) - limit)  # >= 0: a collision at the provider
            set_status(worker, [invocation_id], S.RUNNING)
            flight.append((worker, invocation_id))
        if flight:  # the oldest call in flight ends
            owner, ended = flight.pop(0)
            set_status(owner, [ended], S.SUCCESS)
        turn += 1
    statuses = {app.orchestrator.get_invocation_status(i).value for i in ids}
    return {"worst": max(worst), "starts": len(worst), "statuses": sorted(statuses)}


CHECKS = (
    rule_per_tier,
    raise_starts_waiting_calls,
    lower_admits_nothing_until_below,
    clear_restores_the_tasks_own,
    two_workers_never_exceed,
)


if __name__ == "__main__":
    from claimkit import redis_checks

    print(json.dumps(redis_checks("keyclaim_tiers", sys.argv[1], CHECKS), default=str))
