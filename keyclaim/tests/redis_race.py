"""The Redis twins of test_sqlite_claim.py's forced races, and a claim that never gets through.

Run by test_redis_claim.py in an environment with pynenc-redis, against a private redis-server:
python redis_race.py REDIS_URL. It prints one JSON object with what happened; the test asserts
on it.
"""

import json
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import claimapp
from pynenc.invocation.status import InvocationStatus as S
from pynenc.runner.runner_context import RunnerContext
from pynenc_redis.orchestrator import RedisOrchestrator

from keyclaim import redis_claim
from keyclaim.decision import Decision, Holder
from keyclaim.redis_claim import AtomicClaimRedisOrchestrator

URL = sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/0"
app = claimapp.build("keyclaim_redis_race", redis_url=URL)
tasks = claimapp.bound(app, "http://127.0.0.1:9")  # nothing here runs a call

WAIT = 30.0


class Claimer(AtomicClaimRedisOrchestrator):
    """The claim, stoppable in `decide` (after its watched read, before MULTI) on its first try."""

    def __init__(self, app: Any, pause: bool = False) -> None:
        super().__init__(app)
        self.pause = pause
        self.tries = 0
        self.checked, self.go = threading.Event(), threading.Event()

    def decide(self, *args: Any) -> Decision:
        self.tries += 1
        if self.pause and self.tries == 1:
            self.checked.set()
            assert self.go.wait(WAIT), "the paused claimer was never let go"
        return super().decide(*args)


class Contended(Claimer):
    """Every try, someone else writes a key it watches, so its EXEC always fails. The pauses it
    takes between tries are written down."""

    attempts = 5

    def __init__(self, app: Any, **extra: Any) -> None:
        super().__init__(app, **extra)
        self.pauses: list[float] = []

    def _backoff(self, attempt: int) -> float:
        self.pauses.append(super()._backoff(attempt))
        return self.pauses[-1]

    def decide(self, invocation: Any, *args: Any) -> Decision:
        status_key = self.key.invocation_to_status(invocation.invocation_id)
        other = type(self.client).from_url(URL)
        other.set(status_key, other.get(status_key))
        other.close()
        return super().decide(invocation, *args)


class RedisPausingProducer(AtomicClaimRedisOrchestrator):
    """Registers through the claim; stops when it first decides to queue or park a call,
    after its watched read of the key's holder."""

    def __init__(self, app: Any) -> None:
        super().__init__(app)
        self.reads = 0
        self.checked, self.go = threading.Event(), threading.Event()

    def admits(self, invocation: Any, holder: list[Holder]) -> bool:
        self.reads += 1
        if self.reads == 1:
            self.checked.set()
            assert self.go.wait(WAIT), "the paused producer was never let go"
        return super().admits(invocation, holder)


@contextmanager
def registering_with(orchestrator: Any) -> Iterator[None]:
    """Calls made in the block are registered by this orchestrator."""
    kept, app._orchestrator = app._orchestrator, orchestrator
    try:
        yield
    finally:
        app._orchestrator = kept


def claimer[T: AtomicClaimRedisOrchestrator](cls: type[T], **extra: Any) -> tuple[T, RunnerContext]:
    orchestrator = cls(app, **extra)
    ctx = RunnerContext(runner_cls="ThreadRunner")
    orchestrator.register_runner_heartbeats([ctx.runner_id])
    return orchestrator, ctx


def take(orchestrator: AtomicClaimRedisOrchestrator, ctx: RunnerContext) -> list[str]:
    return [inv.invocation_id for inv in orchestrator.get_invocations_to_run(1, ctx)]


def race() -> dict[str, Any]:
    """Claimer 1 reads the key under WATCH and stops; claimer 2 claims; claimer 1 goes on."""
    app.purge()
    with registering_with(RedisOrchestrator(app)):  # both on the queue, to race for
        first, second = tasks.call_keyed("acme", "op1"), tasks.call_keyed("acme", "op2")
    (one, ctx1), (two, ctx2) = claimer(Claimer, pause=True), claimer(Claimer)
    taken: dict[str, list[str]] = {}
    thread = threading.Thread(target=lambda: taken.setdefault("one", take(one, ctx1)))
    thread.start()
    try:
        assert one.checked.wait(WAIT), "claimer 1 never reached its check"
        taken["two"] = take(two, ctx2)
    finally:
        one.go.set()
        thread.join(WAIT)
    status = app.orchestrator.get_invocation_status
    return {
        "one": taken.get("one"),
        "two": taken["two"],
        "tries_one": one.tries,
        "statuses": [status(i.invocation_id).value for i in (first, second)],
        "ids": [first.invocation_id, second.invocation_id],
    }


def park_and_hand_over() -> dict[str, Any]:
    """A producer reads the key's holder and stops; the holder finishes (and, the line being
    empty, frees the key); then the producer goes on. Its call must not be left in a line."""
    app.purge()
    holding, ctx = claimer(Claimer)
    holder = tasks.call_keyed("initech", "op0")
    assert take(holding, ctx) == [holder.invocation_id]
    holding.set_invocation_status(holder.invocation_id, S.RUNNING, ctx)
    producer = RedisPausingProducer(app)
    made: dict[str, Any] = {}

    def register() -> None:
        with registering_with(producer):
            made["late"] = tasks.call_keyed("initech", "op1")

    thread = threading.Thread(target=register)
    thread.start()
    try:
        assert producer.checked.wait(WAIT), "the producer never read the holder"
        holding.set_invocation_status(holder.invocation_id, S.SUCCESS, ctx)
    finally:
        producer.go.set()
        thread.join(WAIT)
    late = made["late"].invocation_id
    return {
        "producer_reads": producer.reads,
        "status": app.orchestrator.get_invocation_status(late).value,
        "queued": app.broker.count_invocations(),
        "waiting": holding.waiting(),
        "taken": take(holding, ctx) == [late],
    }


def contention() -> dict[str, Any]:
    """A claim whose watched keys change on every try gives up and requeues its invocation."""
    app.purge()
    call = tasks.call_keyed("globex", "op1")
    contended, ctx = claimer(Contended)
    taken = take(contended, ctx)
    return {
        "taken": taken,
        "tries": contended.tries,
        "pauses": contended.pauses,
        "status": app.orchestrator.get_invocation_status(call.invocation_id).value,
        "queued": app.broker.count_invocations(),
        "counts": contended.claim_counts(),
    }


def unrelated_release() -> dict[str, Any]:
    """A free key's claim, between its read of the token floor and its EXEC: another key's
    last call ends, its idle counter folded into the floor. The claim must not be sent back."""
    app.purge()
    holding, ctx = claimer(Claimer)
    ended = tasks.call_keyed("hooli", "op0")
    assert take(holding, ctx) == [ended.invocation_id]
    holding.set_invocation_status(ended.invocation_id, S.RUNNING, ctx)
    call = tasks.call_keyed("aviato", "op0")
    claiming, ctx2 = claimer(Claimer)
    original = redis_claim.first_token

    def first_token(now: float) -> int:  # called after the floor is read, before MULTI
        redis_claim.first_token = original
        holding.set_invocation_status(ended.invocation_id, S.SUCCESS, ctx)  # raises the floor
        return original(now)

    redis_claim.first_token = first_token
    return {
        "taken": take(claiming, ctx2) == [call.invocation_id],
        "tries": claiming.tries,
        "retries": claiming.claim_counts()["retries"],
    }


def parked_meanwhile() -> dict[str, Any]:
    """A key's first call is being claimed (read, not yet written) when its next call is
    registered and parks in the key's line. The claim must not be sent back."""
    app.purge()
    first = tasks.call_keyed("stark", "op1")
    claiming, ctx = claimer(Claimer, pause=True)
    taken: dict[str, list[str]] = {}
    thread = threading.Thread(target=lambda: taken.setdefault("one", take(claiming, ctx)))
    thread.start()
    try:
        assert claiming.checked.wait(WAIT), "the claimer never reached its check"
        tasks.call_keyed("stark", "op2")
    finally:
        claiming.go.set()
        thread.join(WAIT)
    return {
        "taken": taken.get("one") == [first.invocation_id],
        "tries": claiming.tries,
        "waiting": claiming.waiting(),
    }


def stale_and_lost_holders() -> dict[str, Any]:
    """Holders that cannot pass their key on by themselves: one ended by a process without the
    claim, one taken off the queue by a worker that died before claiming it."""
    app.purge()
    holding, ctx = claimer(Claimer)
    ended = tasks.call_keyed("umbrella", "op0")
    assert take(holding, ctx) == [ended.invocation_id]
    stock = RedisOrchestrator(app)
    stock.set_invocation_status(ended.invocation_id, S.RUNNING, ctx)
    stock.set_invocation_status(ended.invocation_id, S.SUCCESS, ctx)  # no hand-over
    after_ended = tasks.call_keyed("umbrella", "op1")  # registers past the stale holder
    found: dict[str, Any] = {"after_ended_taken": take(holding, ctx) == [after_ended.invocation_id]}
    lost = tasks.call_keyed("vandelay", "op0")
    assert app.broker.retrieve_invocation() == lost.invocation_id  # ...and it died
    holding.heal_holders(ctx)
    found["queued_after_one_sweep"] = app.broker.count_invocations()
    holding.heal_holders(ctx)
    found["lost_taken"] = take(holding, ctx) == [lost.invocation_id]
    return found


def main() -> int:
    found = {
        "race": race(),
        "park": park_and_hand_over(),
        "contention": contention(),
        "unrelated": unrelated_release(),
        "parked": parked_meanwhile(),
        "healing": stale_and_lost_holders(),
    }
    print(json.dumps(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
