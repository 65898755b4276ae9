"""One call per account when a worker is stopped, stalled or killed mid-call, with the claim on.

Real workers, the real provider; `/pause` holds the holder's call in flight, so each fault lands
mid-call without timing luck, and a held link (helpers.HeldLink) keeps a call on its way there
until a newer one has arrived. The windows are short (a call times out after 2 s, a silent runner
is dead after 3 s) and the provider is resumed as soon as the state to check is reached.
"""

import os
import signal
from collections.abc import Callable
from datetime import datetime
from urllib.parse import urlsplit

import psutil
from pynenc.invocation.status import InvocationStatus as S

import tasks
from demo.processes import Child, wait_until
from demo.provider import Provider
from helpers import (
    WAIT,
    HeldLink,
    account,
    calls_for,
    history,
    paused,
    settled_history,
    status_of,
    unique,
    wait_in_flight,
    write_lock_held,
)

SHORT = {"DEMO_ATOMIC_CLAIM": "1", "DEMO_DEAD_AFTER": "3", "DEMO_CALL_TIMEOUT": "2"}
# The deploy case waits for no window: the defaults (a 10 s call timeout, a 15 s window).
DEPLOY = {"DEMO_ATOMIC_CLAIM": "1"}
# A worker whose call may stay in flight for the defaults' 10 s, beating as often as SHORT's
# workers (every 0.75 s), so that a SHORT worker, whose window is 3 s, sees it alive while
# its loop runs: only its drain can then be longer than that window.
# A drain long enough to see the drain beat (every second) before the call's 5 s timeout.
DRAIN_BEATS = {"DEMO_ATOMIC_CLAIM": "1", "DEMO_DEAD_AFTER": "6", "DEMO_CALL_TIMEOUT": "5"}
# The draining runner's own line (demo/drain.py), for one call. Not "Draining" alone: pynenc's
# SIGTERM line names the class, DrainingThreadRunner, whichever way the runner then stops.
DRAINS_ONE = "Draining 1 call(s) before stopping"


def holder_pid(invocation_id: str) -> int:
    """The process of the runner that holds an invocation now."""
    record = tasks.app.orchestrator.get_invocation_status_record(invocation_id)
    context = tasks.app.state_backend.get_runner_context(record.runner_id)
    assert context is not None, f"no runner context for {record}"
    return context.pid


def runner_of(invocation_id: str) -> str:
    return tasks.app.orchestrator.get_invocation_status_record(invocation_id).runner_id


def last_beat(runner_id: str) -> datetime:
    """The runner's last heartbeat, as pynenc stored it."""
    (beat,) = [
        r.last_heartbeat
        for r in tasks.app.orchestrator.get_active_runners()
        if r.runner_id == runner_id
    ]
    return beat


def logged(worker: Child, text: str) -> bool:
    """Whether the worker's whole log so far holds text."""
    worker.log.flush()
    return text in worker.log_path.read_text(errors="replace")


def the_one(workers: list[Child], pid: int) -> Child:
    (found,) = [w for w in workers if w.proc.pid == pid]
    return found


def stop_between_writes(worker: Child) -> None:
    """SIGSTOP the worker at a moment it holds no write lock on the database. Stopped inside a
    write, it would stop every worker's writes with it: SQLite's limit, not the claim's
    (docs/faults.md, what it does not cover). Caught there, it is resumed and stopped again."""
    process = psutil.Process(worker.proc.pid)

    def stopped_between_writes() -> bool:
        os.kill(worker.proc.pid, signal.SIGSTOP)
        wait_until(lambda: process.status() == psutil.STATUS_STOPPED, WAIT, "the stop")
        if not write_lock_held(tasks.app.orchestrator.sqlite_db_path):
            return True
        os.kill(worker.proc.pid, signal.SIGCONT)
        return False

    wait_until(stopped_between_writes, WAIT, "a stop outside the worker's writes")


def final(*invocation_ids: str) -> list[S]:
    return [
        wait_until(lambda i=i: (s := status_of(i)).is_final() and s, 2 * WAIT, f"{i} to finish")
        for i in invocation_ids
    ]


def ops_called(provider: Provider, acct: str) -> list[str]:
    return sorted(c["op"] for c in provider.timeline() if c["account_id"] == acct)


def test_a_deploy_sigterm_drains_the_call_instead_of_handing_it_on(
    claim_app: Provider, start_worker: Callable
) -> None:
    """pynenc's ThreadRunner marks the call KILLED and reroutes it before joining its thread, so
    the other worker calls again while the first call is in flight. The draining runner lets
    the call finish first. Checked by mutation: with runner_cls set back to ThreadRunner for
    the claim, or with DrainingThreadRunner._on_stop reduced to `super()._on_stop()` (pynenc's
    stop), this test fails: op1 is called twice."""
    claim_app.reset("fault: deploy", hold=0.0)
    acct = unique()
    first_worker = start_worker(DEPLOY)
    with paused(claim_app):
        first = tasks.call_keyed(acct, "op1")
        wait_in_flight(claim_app, acct)
        second_worker = start_worker(DEPLOY)
        second = tasks.call_keyed(acct, "op2")
        assert holder_pid(first.invocation_id) == first_worker.proc.pid
        os.killpg(first_worker.proc.pid, signal.SIGTERM)
        # The stop has been handled, whichever way the runner handles it, before the call ends:
        # the drain has begun, or pynenc's stop has killed the call.
        wait_until(
            lambda: logged(first_worker, DRAINS_ONE) or S.KILLED in history(first.invocation_id),
            WAIT,
            "the holder to handle its SIGTERM",
        )
    assert final(first.invocation_id, second.invocation_id) == [S.SUCCESS, S.SUCCESS]
    assert first_worker.proc.wait(WAIT) == 0
    assert second_worker.proc.poll() is None
    assert ops_called(claim_app, acct) == ["op1", "op2"]
    assert account(claim_app, acct)["collisions"] == 0
    assert S.KILLED not in history(first.invocation_id)


def test_a_stalled_holder_woken_after_the_window_is_fenced(
    claim_app: Provider, start_worker: Callable
) -> None:
    """SIGSTOP the holder mid-call until its account has been recovered and called again, then
    SIGCONT it. The newer call's token fences the stale one at the provider, and the woken
    worker's late outcome (its call timed out while it was stopped) is not stored. Checked by
    mutation: without the token in `_hit`, the provider records a collision; with `_still_holds`
    always true, the woken worker stores an exception for a call that succeeded, then dies on
    the refused status change."""
    claim_app.reset("fault: stall", hold=0.0)
    acct = unique()
    workers = [start_worker(SHORT), start_worker(SHORT)]
    with paused(claim_app):
        call = tasks.call_keyed(acct, "op1")
        wait_in_flight(claim_app, acct)
        stalled = the_one(workers, holder_pid(call.invocation_id))
        stop_between_writes(stalled)
        try:
            # The other worker finds the holder silent past the window and calls again while
            # the provider still holds the stale call.
            wait_until(lambda: account(claim_app, acct)["calls"] == 2, WAIT, "the second call")
        finally:
            claim_app.resume()
            os.kill(stalled.proc.pid, signal.SIGCONT)
    assert final(call.invocation_id) == [S.SUCCESS]
    # The woken worker's call returns (or times out); what it does next is logged either way.
    woke = ("outlived its claim", "lost ownership", "transition conflict", "Exception in thread")
    wait_until(lambda: any(w in stalled.tail(200) for w in woke), WAIT, "the stale call to end")
    assert call.result == "ok"
    assert "outlived its claim" in stalled.tail(200)
    # The stale call ends at the provider a moment after the resume: its worker may have given
    # up on it (timed out while stopped) before, and the newer call ended first.
    wait_in_flight(claim_app, acct, 0)
    seen = settled_history(call.invocation_id)
    assert seen.count(S.SUCCESS) == 1 and S.RUNNING_RECOVERY in seen, seen
    assert account(claim_app, acct) == {"calls": 2, "collisions": 0, "in_flight": 0, "fenced": 1}


def test_a_killed_holders_call_still_at_the_provider_is_fenced_and_the_rest_finishes(
    claim_app: Provider, start_worker: Callable
) -> None:
    """SIGKILL the holder while the provider still serves its call: after the window its call
    runs again, and the new token fences the cut call instead of colliding with it; the
    account's next call runs too. Checked by mutation: without the token, a collision."""
    claim_app.reset("fault: kill", hold=0.0)
    acct = unique()
    workers = [start_worker(SHORT), start_worker(SHORT)]
    with paused(claim_app):
        first = tasks.call_keyed(acct, "op1")
        wait_in_flight(claim_app, acct)
        killed = the_one(workers, holder_pid(first.invocation_id))
        second = tasks.call_keyed(acct, "op2")
        os.killpg(killed.proc.pid, signal.SIGKILL)
        killed.proc.wait(WAIT)
        wait_until(lambda: account(claim_app, acct)["calls"] == 2, WAIT, "a call after the window")
    assert final(first.invocation_id, second.invocation_id) == [S.SUCCESS, S.SUCCESS]
    assert first.result == second.result == "ok"
    wait_in_flight(claim_app, acct, 0)  # the cut call ends at the provider after the resume
    assert account(claim_app, acct) == {"calls": 3, "collisions": 0, "in_flight": 0, "fenced": 1}
    assert ops_called(claim_app, acct) == ["op1", "op1", "op2"]
    assert S.RUNNING_RECOVERY in history(first.invocation_id)
    assert tasks.app.orchestrator.waiting() == 0


def test_a_call_that_reaches_the_provider_after_a_newer_claim_is_fenced_there(
    claim_app: Provider, start_worker: Callable
) -> None:
    """The holder's request is held on its way to the provider (a slow network), and the holder
    is stopped: after the window the other worker recovers the call and sends it with a newer
    token. The held request then arrives, older than the newest token the provider has seen
    for the account: it is refused as it arrives (fenced, not applied, not a collision), and
    the woken holder's outcome is not stored. Checked by mutation: without the late-arrival
    branch of `Account.arrive` in api_server.py, the late call is counted as a collision and
    nothing is fenced."""
    claim_app.reset("fault: late arrival", hold=0.0)
    acct = unique()
    with HeldLink(urlsplit(claim_app.base_url).port or 0) as link, paused(claim_app):
        late = start_worker({**SHORT, "DEMO_API_PORT": str(link.port)})
        call = tasks.call_keyed(acct, "op1")
        wait_until(link.held.is_set, WAIT, "the holder's request to be held on its way")
        assert holder_pid(call.invocation_id) == late.proc.pid
        stop_between_writes(late)
        try:
            start_worker(SHORT)
            # After the window: the call recovered and sent again, with a newer token.
            wait_in_flight(claim_app, acct)
            link.release()
            wait_until(lambda: account(claim_app, acct)["calls"] == 2, WAIT, "the late call")
        finally:
            claim_app.resume()
            os.kill(late.proc.pid, signal.SIGCONT)
    assert final(call.invocation_id) == [S.SUCCESS]
    assert call.result == "ok"
    wait_until(lambda: logged(late, "outlived its claim"), WAIT, "the late holder's outcome")
    assert account(claim_app, acct) == {"calls": 2, "collisions": 0, "in_flight": 0, "fenced": 1}
    applied, refused = sorted(calls_for(claim_app, acct), key=lambda c: c["start"])
    assert refused["token"] < applied["token"], (applied, refused)
    assert refused["fenced"] and not applied["fenced"], (applied, refused)
    seen = settled_history(call.invocation_id)
    assert seen.count(S.SUCCESS) == 1 and S.RUNNING_RECOVERY in seen, seen


def test_a_draining_worker_keeps_beating_so_its_call_is_not_recovered(
    claim_app: Provider, start_worker: Callable
) -> None:
    """SIGTERM a worker while its call is paused at the provider: its loop has stopped, so
    only the drain's own heartbeats say it is alive while it waits for the call. It beats
    during the drain; once the call ends, nothing has recovered it, and it ran once. Both
    workers run with the same windows (the claim refuses a fleet that does not). Checked by
    mutation: without the heartbeat in DrainingThreadRunner._on_stop, no beat came during the
    drain and this test fails."""
    claim_app.reset("fault: drain beats", hold=0.0)
    acct = unique()
    workers = [start_worker(DRAIN_BEATS), start_worker(DRAIN_BEATS)]
    with paused(claim_app):
        call = tasks.call_keyed(acct, "op1")
        wait_in_flight(claim_app, acct)
        draining = the_one(workers, holder_pid(call.invocation_id))
        (other,) = [w for w in workers if w is not draining]
        runner = runner_of(call.invocation_id)
        os.killpg(draining.proc.pid, signal.SIGTERM)
        wait_until(lambda: logged(draining, DRAINS_ONE), WAIT, "the drain to begin")
        began = last_beat(runner)  # the loop's last beat, or the drain's first
        wait_until(lambda: last_beat(runner) > began, WAIT, "a heartbeat during the drain")
    assert final(call.invocation_id) == [S.SUCCESS]
    assert call.result == "ok"
    assert draining.proc.wait(WAIT) == 0
    assert not logged(other, "recovered from a dead runner")
    assert S.RUNNING_RECOVERY not in settled_history(call.invocation_id)
    assert account(claim_app, acct) == {"calls": 1, "collisions": 0, "in_flight": 0, "fenced": 0}
