"""A lower's given-back call that a worker took off the queue and claims after the lower.

Does it keep its place at the head of its key's line?

A gold account (three slots): two calls running, a third holding a slot not started, which a
worker has just retrieved from the queue (pynenc's loop: retrieve, then claim), and two more in
line. The operator lowers the account to one: the third gives its slot back and waits at the
head of the line. Then the worker's claim of it runs (key busy: it parks). The line should
still be third, fourth, fifth, in enqueue order. python given_back_race.py URL (Redis).
"""

import json
import sys
from typing import Any

from pynenc.invocation.status import InvocationStatus as S
from tiers import Claimer, set_status, taken

from keyclaim import overrides


def line_order(app: Any, line: str) -> list[str]:
    o = app.orchestrator
    if o.BACKEND == "sqlite":
        with o._connect() as conn:
            rows = conn.execute(
                f"SELECT invocation_id FROM {o.lines} WHERE line_key = ? ORDER BY seq", (line,)
            ).fetchall()
        return [r[0] for r in rows]
    return [i.decode() for i in o.client.lrange(o._k("line", line), 0, -1)]


def given_back_keeps_its_place(app: Any, tasks: Any, new: Claimer) -> dict[str, Any]:
    one, two = new(), new()
    ids = [tasks.call_tiered("gold-d", f"op{n}").invocation_id for n in range(5)]
    running = taken(one, 2)
    set_status(one, running, S.RUNNING)
    retrieved = app.broker.retrieve_invocation()  # worker two's loop: off the queue, not claimed
    overrides.set_limit(app, tasks.call_tiered, {"account_id": "gold-d"}, slots=1)
    line, _ = overrides.line_of(tasks.call_tiered, {"account_id": "gold-d"})
    before = line_order(app, line)
    orchestrator, ctx = two
    verdict = orchestrator.claim(app.state_backend.get_invocation(retrieved), ctx)
    after = line_order(app, line)
    name = {i: f"c{n}" for n, i in enumerate(ids)}
    return {
        "retrieved": name.get(retrieved),
        "verdict": verdict.name,
        "before": [name[i] for i in before],
        "after": [name[i] for i in after],
    }


def raise_racing_a_park(app: Any, tasks: Any, new: Claimer) -> dict[str, Any]:
    """The same given-back call, its worker's claim (a park) landing between the operator's
    raise reading the line's head and the raise's write: the raise should start the head it
    read and leave the rest in line, every call ending up held, queued or in line once."""
    one, two = new(), new()
    ids = [tasks.call_tiered("gold-e", f"op{n}").invocation_id for n in range(5)]
    running = taken(one, 2)
    set_status(one, running, S.RUNNING)
    retrieved = app.broker.retrieve_invocation()
    key = {"account_id": "gold-e"}
    overrides.set_limit(app, tasks.call_tiered, key, slots=1)
    line, _ = overrides.line_of(tasks.call_tiered, key)
    orchestrator, ctx = two
    setter, verdicts = app.orchestrator, []
    plain = setter._transaction

    def interleaved(step: Any, *watched: str) -> Any:
        def between(pipe: Any) -> Any:
            value = step(pipe)  # the raise has read the holders and the line's head
            if not verdicts:
                claimed = orchestrator.claim(app.state_backend.get_invocation(retrieved), ctx)
                verdicts.append(claimed.name)
            return value

        return plain(between, *watched)

    setter._transaction = interleaved
    try:
        started = overrides.set_limit(app, tasks.call_tiered, key, slots=3)
    finally:
        setter._transaction = plain
    name = {i: f"c{n}" for n, i in enumerate(ids)}
    holders = [h.invocation_id for h in setter._holders(setter.client.pipeline(), line)]
    queue = app.broker.key.default_queue()
    queued = [i.decode() for i in setter.client.lrange(queue, 0, -1)]
    set_status(one, running, S.SUCCESS)
    in_flight, rounds = taken(two), 0
    while in_flight and rounds < 10:  # every call started ends; the next are taken
        set_status(two, in_flight, S.RUNNING)
        set_status(two, in_flight, S.SUCCESS)
        in_flight, rounds = taken(two), rounds + 1
    return {
        "started": started,
        "verdicts": verdicts,
        "statuses": [app.orchestrator.get_invocation_status(i).value for i in ids],
        "holders": sorted(name[i] for i in holders),
        "queued": sorted(name[i] for i in queued if i in name),
        "line": [name[i] for i in line_order(app, line)],
        "waiting": app.orchestrator.waiting(),
    }


if __name__ == "__main__":
    from claimkit import redis_checks

    checks = (given_back_keeps_its_place, raise_racing_a_park)
    print(json.dumps(redis_checks("keyclaim_given_back", sys.argv[1], checks)))
