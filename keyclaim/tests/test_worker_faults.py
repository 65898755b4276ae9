"""One call per key when a real worker is stopped, stalled or killed mid-call.

Real pynenc workers run claimapp.app on the test's own database; the test's provider holds the
holder's call in flight (`paused`), so each fault lands mid-call without timing luck. The
windows are short (a call lasts at most 2 s, a runner silent for 3 s is dead) and the provider
lets its calls go as soon as the state to check is reached.
"""

import os
import signal
from datetime import datetime

import psutil
import pytest
from claimkit import WAIT, Claim, Worker, Workers, unique, wait_until, write_lock_held
from pynenc.invocation.status import InvocationStatus as S

pytestmark = pytest.mark.slow  # real workers stopped, killed and paused

SHORT = {"dead_after": "3", "longest_call": "2"}
# A drain long enough to see it beat (every second) before the call's 5 s are up.
DRAIN_BEATS = {"dead_after": "6", "longest_call": "5"}
# The draining runner's own line, for one call. Not "Draining" alone: pynenc's SIGTERM line
# names the class, DrainingThreadRunner, whichever way the runner then stops.
DRAINS_ONE = "Draining 1 call(s) before stopping"


def stop_between_writes(worker: Worker, db: str) -> None:
    """SIGSTOP the worker at a moment it holds no write lock on the database. Stopped inside a
    write, it would stop every worker's writes with it: SQLite's limit, not the claim's.
    Caught there, it is resumed and stopped again."""
    process = psutil.Process(worker.proc.pid)

    def stopped_between_writes() -> bool:
        os.kill(worker.proc.pid, signal.SIGSTOP)
        wait_until(lambda: process.status() == psutil.STATUS_STOPPED, WAIT, "the stop")
        if not write_lock_held(db):
            return True
        os.kill(worker.proc.pid, signal.SIGCONT)
        return False

    wait_until(stopped_between_writes, WAIT, "a stop outside the worker's writes")


def last_beat(claim: Claim, runner_id: str) -> datetime:
    """The runner's last heartbeat, as pynenc stored it."""
    (beat,) = [
        r.last_heartbeat
        for r in claim.app.orchestrator.get_active_runners()
        if r.runner_id == runner_id
    ]
    return beat


def test_a_deploy_sigterm_drains_the_call_instead_of_handing_it_on(
    claim: Claim, workers: Workers
) -> None:
    """pynenc's ThreadRunner marks the call KILLED and reroutes it before joining its thread, so
    the other worker calls again while the first call is in flight. The draining runner lets
    the call finish first. Checked by mutation: with DrainingThreadRunner._on_stop reduced to
    `super()._on_stop()` (pynenc's stop), op1 was called twice and this test failed."""
    acct = unique()
    first_worker = workers.start()
    with claim.provider.paused():
        first = claim.tasks.call_keyed(acct, "op1")
        claim.provider.wait_in_flight(acct)
        second_worker = workers.start()
        second = claim.tasks.call_keyed(acct, "op2")
        assert workers.holding(first.invocation_id) is first_worker
        first_worker.signal(signal.SIGTERM)
        # The stop has been handled, whichever way the runner handles it, before the call ends.
        wait_until(
            lambda: (
                first_worker.logged(DRAINS_ONE) or S.KILLED in claim.history(first.invocation_id)
            ),
            WAIT,
            "the holder to handle its SIGTERM",
        )
    assert claim.final(first.invocation_id, second.invocation_id) == [S.SUCCESS, S.SUCCESS]
    assert first_worker.proc.wait(WAIT) == 0
    assert second_worker.proc.poll() is None
    assert claim.provider.ops(acct) == ["op1", "op2"]
    assert claim.provider.counts(acct)["collisions"] == 0
    assert S.KILLED not in claim.history(first.invocation_id)


def test_a_stalled_holder_woken_after_the_window_is_fenced(claim: Claim, workers: Workers) -> None:
    """SIGSTOP the holder mid-call until its key has been recovered and called again, then
    SIGCONT it. The newer call's token fences the stale one at the provider, and the woken
    worker's late outcome is not stored. Checked by mutation: with `_still_holds` always true,
    the woken worker stored its outcome over the newer claim's and `outlived its claim` never
    appeared; without the token (claimapp sending none), a collision."""
    acct = unique()
    started = [workers.start(**SHORT), workers.start(**SHORT)]
    with claim.provider.paused():
        call = claim.tasks.call_keyed(acct, "op1")
        claim.provider.wait_in_flight(acct)
        stalled = workers.holding(call.invocation_id)
        stop_between_writes(stalled, claim.db)
        try:
            # The other worker finds the holder silent past the window and calls again while
            # the provider still holds the stale call.
            claim.provider.wait_for(
                "the second call", lambda: len(claim.provider.keys[acct].calls) == 2
            )
        finally:
            claim.provider.resume()
            os.kill(stalled.proc.pid, signal.SIGCONT)
    assert len(started) == 2
    assert claim.final(call.invocation_id) == [S.SUCCESS]
    wait_until(lambda: stalled.logged("outlived its claim"), WAIT, "the stale call's outcome")
    assert call.result == "ok"
    claim.provider.wait_in_flight(acct, 0)
    seen = claim.settled_history(call.invocation_id)
    assert seen.count(S.SUCCESS) == 1 and S.RUNNING_RECOVERY in seen, seen
    assert claim.provider.counts(acct) == {"calls": 2, "applied": 1, "collisions": 0, "fenced": 1}


def test_a_killed_holders_call_still_at_the_provider_is_fenced_and_the_rest_finishes(
    claim: Claim, workers: Workers
) -> None:
    """SIGKILL the holder while the provider still serves its call: after the window its call
    runs again, and the new token fences the cut call instead of colliding with it; the key's
    next call runs too. Checked by mutation: without the token, a collision."""
    acct = unique()
    for _ in range(2):
        workers.start(**SHORT)
    with claim.provider.paused():
        first = claim.tasks.call_keyed(acct, "op1")
        claim.provider.wait_in_flight(acct)
        killed = workers.holding(first.invocation_id)
        second = claim.tasks.call_keyed(acct, "op2")
        killed.signal(signal.SIGKILL)
        killed.proc.wait(WAIT)
        claim.provider.wait_for(
            "a call after the window", lambda: len(claim.provider.keys[acct].calls) == 2
        )
    assert claim.final(first.invocation_id, second.invocation_id) == [S.SUCCESS, S.SUCCESS]
    assert first.result == second.result == "ok"
    claim.provider.wait_in_flight(acct, 0)
    assert claim.provider.counts(acct) == {"calls": 3, "applied": 2, "collisions": 0, "fenced": 1}
    assert claim.provider.ops(acct, applied=False) == ["op1", "op1", "op2"]
    assert S.RUNNING_RECOVERY in claim.history(first.invocation_id)
    assert claim.app.orchestrator.waiting() == 0


def test_a_draining_worker_keeps_beating_so_its_call_is_not_recovered(
    claim: Claim, workers: Workers
) -> None:
    """SIGTERM a worker while its call is held at the provider: its loop has stopped, so only
    the drain's own heartbeats say it is alive while it waits for the call. It beats during
    the drain; once the call ends, nothing has recovered it, and it ran once. Checked by
    mutation: without the heartbeat in DrainingThreadRunner._on_stop, no beat came during the
    drain and this test failed."""
    acct = unique()
    started = [workers.start(**DRAIN_BEATS), workers.start(**DRAIN_BEATS)]
    with claim.provider.paused():
        call = claim.tasks.call_keyed(acct, "op1")
        claim.provider.wait_in_flight(acct)
        draining = workers.holding(call.invocation_id)
        (other,) = [w for w in started if w is not draining]
        draining.signal(signal.SIGTERM)
        wait_until(lambda: draining.logged(DRAINS_ONE), WAIT, "the drain to begin")
        began = last_beat(claim, draining.runner_id)  # the loop's last beat, or the drain's
        wait_until(
            lambda: last_beat(claim, draining.runner_id) > began, WAIT, "a beat during the drain"
        )
    assert claim.final(call.invocation_id) == [S.SUCCESS]
    assert call.result == "ok"
    assert draining.proc.wait(WAIT) == 0
    assert not other.logged("recovered from a dead runner")
    assert S.RUNNING_RECOVERY not in claim.settled_history(call.invocation_id)
    assert claim.provider.counts(acct) == {"calls": 1, "applied": 1, "collisions": 0, "fenced": 0}
