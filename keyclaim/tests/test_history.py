"""The purge of finished invocations' records (keyclaim.history), on SQLite and Redis.

Only those older than the retention go; a holder, a RUNNING call and a parked call stay."""

import threading
from pathlib import Path
from typing import Any

import purge_run
import pytest
from claimkit import WAIT, Claim, Workers, new_claim, wait_until
from provider import Judge
from pynenc.invocation.status import InvocationStatus as S
from pynenc.runner.runner_context import RunnerContext
from test_redis_claim import redis_script

from keyclaim import history


def check(found: dict[str, Any]) -> None:
    before, after = found["before"], found["after"]
    parked, parked_status, parked_history = found["parked"]
    # Each finished call had its orchestrator row, args, history, result...; none is left.
    assert all(before[i] >= 5 for i in found["done"]), before
    assert found["left"] == []
    # The RUNNING ones (a key's holder, a call without a key) and the call parked in the
    # holder's line keep every record.
    assert found["running"] == [True, S.RUNNING.value, S.RUNNING.value]
    assert parked_status == S.REGISTERED.value and parked_history >= 1
    kept = [i for i in before if i not in found["done"]]
    assert {i: after[i] for i in kept} == {i: before[i] for i in kept}


def test_on_sqlite_finished_calls_leave_no_record_and_a_holder_and_its_line_stay(
    tmp_path: Path, provider: Judge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mutations checked: with the state backend's tables left out of SQLITE_ROWS, the done
    calls kept their history and results (after > 0); with the final-status filter dropped
    from the purge's queries, the RUNNING call without a key was purged (after == 0; the
    holder is kept by the claim's check too)."""
    monkeypatch.setenv("PYNENC__AUTO_FINAL_INVOCATION_PURGE_HOURS", purge_run.RETAIN_HOURS)
    claim: Claim = new_claim(tmp_path, provider)
    check(purge_run.run(claim.app, claim.tasks))


def test_a_long_retention_purges_nothing(claim: Claim) -> None:
    """pynenc's default, 24 hours: a call that just finished stays. Mutation checked: with the
    retention ignored (before = time.time()), the batch took it."""
    ctx = RunnerContext(runner_cls="ThreadRunner")
    invocation = claim.tasks.call_unsafe("acct-now", "op")
    for taken in claim.app.orchestrator.get_invocations_to_run(1, ctx):
        taken.run(ctx)
    assert claim.final(invocation.invocation_id) == [S.SUCCESS]
    assert history.purge_batch(claim.app) == 0
    assert len(purge_run.records(claim.app, invocation.invocation_id)) >= 5


@pytest.mark.slow
@pytest.mark.e2e
def test_on_redis_finished_calls_leave_no_record_and_a_holder_and_its_line_stay(
    redis_url: str,
) -> None:
    """The same on Redis, every key and member naming the invocation counted. Mutations
    checked: with the state backend's keys left out of `own` (invocation, history, result,
    exception), their keys were left."""
    check(redis_script("purge_run.py", redis_url))


@pytest.mark.slow
def test_purging_beside_a_worker_with_kept_connections_fails_no_call(
    claim: Claim, workers: Workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finished calls kept about a second: this process purges batch after batch while a
    worker with the claim and kept connections runs 40 calls on 4 keys, and purges on its own
    sweep too. Each call's final status is seen (polled well within the second) as SUCCESS,
    every call was applied once, and in the end none is left. Mutation checked: a purge that
    holds the write lock 35 s in its transaction fails it (the purge never ends in time); one
    that also ignores the status and the claim's names passed (the retention alone kept the
    calls in flight, changed less than a second before)."""
    monkeypatch.setenv("PYNENC__AUTO_FINAL_INVOCATION_PURGE_HOURS", "0.0003")
    worker = workers.start(keep="1")
    ids = [claim.tasks.call_keyed(f"acct-{n % 4}", f"op{n}").invocation_id for n in range(40)]
    seen: dict[str, str] = {}
    purged, stop = [0], threading.Event()

    def purge() -> None:
        while not stop.is_set():
            purged[0] += history.purge_batch(claim.app)

    purging = threading.Thread(target=purge)
    purging.start()
    try:

        def all_seen() -> bool:
            for i in set(ids) - seen.keys():
                if (status := claim.status(i)).is_final():
                    seen[i] = status.value
            return len(seen) == len(ids)

        wait_until(all_seen, 2 * WAIT, "every call's final status")
        wait_until(lambda: not any(purge_run.records(claim.app, i) for i in ids), WAIT, "purge")
    finally:
        stop.set()
        purging.join(WAIT)
    assert set(seen.values()) == {S.SUCCESS.value}
    assert sum(claim.provider.counts(f"acct-{n}")["applied"] for n in range(4)) == 40
    assert purged[0] >= 40 and not worker.logged("purging finished invocations")
