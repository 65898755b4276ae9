"""The Redis twins of test_claim_state.py: what the claim keeps, counted in a private Redis.

Run by test_redis_claim.py in an environment with pynenc-redis: python redis_state.py URL. It
prints one JSON object with what it counted; the test asserts on it.
"""

import json
import socket
import subprocess
import sys
from typing import Any

import claimapp
from pynenc.invocation.status import InvocationStatus as S
from pynenc.runner.runner_context import RunnerContext

from keyclaim import Refused, redis_claim
from keyclaim.fleet import FleetStore
from keyclaim.redis_claim import AtomicClaimRedisOrchestrator as Claimer
from keyclaim.redis_keys import seconds_of

URL = sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/0"
app = claimapp.build("keyclaim_redis_state", redis_url=URL)
tasks = claimapp.bound(app, "http://127.0.0.1:9")  # nothing here runs a call


def claimer() -> tuple[Claimer, RunnerContext]:
    orchestrator, ctx = Claimer(app), RunnerContext(runner_cls="ThreadRunner")
    orchestrator.register_runner_heartbeats([ctx.runner_id])
    return orchestrator, ctx


def run_to(orchestrator: Claimer, ctx: RunnerContext, status: S) -> Any:
    (invocation,) = orchestrator.get_invocations_to_run(1, ctx)
    orchestrator.set_invocation_status(invocation.invocation_id, S.RUNNING, ctx)
    orchestrator.set_invocation_status(invocation.invocation_id, status, ctx)
    return invocation


# The claim's keys (keyclaim.redis_claim, redis_keys) besides those kept for the app: the
# floor, the beats, the counts and the fleet.
PER_KEY_OR_CALL = ("fence", "fences", "claimed_at", "slots", "holds", "slot", "holders", "line")
PER_KEY_OR_CALL += ("parked", "dues", "admitted")


def kept(orchestrator: Claimer) -> dict[str, int]:
    """The claim's per-key and per-call keys left, by kind, and the fields of its hashes."""
    found: dict[str, int] = {}
    for name in app.orchestrator.client.scan_iter(orchestrator._k("*")):
        kind = name.decode().removeprefix(orchestrator._k()).split(":")[0]
        if kind in PER_KEY_OR_CALL:
            found[kind] = found.get(kind, 0) + 1
    for per_call in ("fences", "claimed_at"):
        if fields := app.orchestrator.client.hlen(orchestrator._k(per_call)):
            found[f"{per_call} fields"] = fields
    return found


def final_calls() -> dict[str, Any]:
    app.purge()
    for n in range(3):
        tasks.call_keyed("acme", f"op{n}")
    for n in range(2):
        tasks.call_two("globex", f"op{n}")
    orchestrator, ctx = claimer()
    ended = [run_to(orchestrator, ctx, s) for s in (S.SUCCESS, S.FAILED, S.SUCCESS, S.SUCCESS)]
    ended.append(run_to(orchestrator, ctx, S.FAILED))
    late = ended[0]
    orchestrator.set_invocation_result(late, "late", ctx)
    return {
        "kept": kept(orchestrator),
        "floor": int(app.orchestrator.client.get(orchestrator._k("fence_floor"))),
        "tokens": [i.fence_token for i in ended],
        "late": app.orchestrator.get_invocation_status(late.invocation_id).value,
    }


def idle_key_with_the_clock_back() -> list[int]:
    app.purge()
    orchestrator, ctx = claimer()
    tokens = []
    for n in range(2):
        tasks.call_keyed("initech", f"op{n}")
        tokens.append(run_to(orchestrator, ctx, S.SUCCESS).fence_token)
        redis_claim.first_token = lambda now: int((now - 3600) * 1_000_000)  # Redis TIME, back
    return tokens


def refused_ids() -> dict[str, Any]:
    app.purge()
    orchestrator, ctx = claimer()
    client = app.orchestrator.client
    before = sorted(client.keys("*"))
    try:
        tasks.call_keyed("x" * 2048, "op")
        refused = ""
    except Refused as exc:
        refused = str(exc)
    unchanged = sorted(client.keys("*")) == before
    bad = tasks.call_keyed("not an account!", "op")
    (taken,) = orchestrator.get_invocations_to_run(1, ctx)
    orchestrator.set_invocation_status(bad.invocation_id, S.RUNNING, ctx)
    orchestrator.set_invocation_exception(taken, ValueError("no such account"), ctx)
    return {
        "refused": refused,
        "unchanged": unchanged,
        "status": app.orchestrator.get_invocation_status(bad.invocation_id).value,
        "kept": kept(orchestrator),
    }


def restamped() -> dict[str, Any]:
    """A rated call's admission, set back an hour after its claim: a second call of the key is
    not taken while the first has not started; then pruned, it is added again by its RUNNING."""
    app.purge()
    orchestrator, ctx = claimer()
    call = tasks.call_rated("umbrella", "op0")
    (taken,) = orchestrator.get_invocations_to_run(1, ctx)
    assert taken.invocation_id == call.invocation_id
    client, window = app.orchestrator.client, orchestrator._k("admitted", "*")
    (key,) = client.keys(window)
    ((member, at),) = client.zrange(key, 0, -1, withscores=True)
    client.zadd(key, {member: at - 3600})
    tasks.call_rated("umbrella", "op1")
    second = len(list(orchestrator.get_invocations_to_run(1, ctx)))
    client.zrem(key, member)  # its last member: the key goes too
    before = seconds_of(client.time())
    orchestrator.set_invocation_status(call.invocation_id, S.RUNNING, ctx)
    ((_, after),) = client.zrange(key, 0, -1, withscores=True)
    return {
        "back": at - 3600,
        "before": before,
        "after": after,
        "second": second,
        "expires": client.ttl(key) > 0,
    }


def stopped_worker() -> dict[str, Any]:
    app.purge()
    _, gone = claimer()
    dead = subprocess.Popen(["true"])
    dead.wait()
    record = {"settings": {}, "pid": dead.pid, "host": socket.gethostname()}
    FleetStore(app).write(gone.runner_id, json.dumps(record))
    sweeper, ctx = claimer()
    beats = sweeper._k("beats")
    sweeper.client.hset(
        beats, gone.runner_id, float(sweeper.client.hget(beats, ctx.runner_id)) - 3600
    )
    before = (sweeper.client.hlen(beats), len(FleetStore(app).records()))
    sweeper.recover_silent_runners(ctx)
    return {
        "before": before,
        "after": (sweeper.client.hlen(beats), len(FleetStore(app).records())),
        "kept": sorted(k.decode() for k in sweeper.client.hkeys(beats)) == [ctx.runner_id],
    }


if __name__ == "__main__":
    found = {
        "final": final_calls(),
        "refused": refused_ids(),
        "stopped": stopped_worker(),
        "restamped": restamped(),
        "idle": idle_key_with_the_clock_back(),  # last: it leaves the clock set back
    }
    print(json.dumps(found))
