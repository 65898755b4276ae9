"""The hand-over in a call's own thread (keyclaim.handover) under a stop, a kill or a blink.

Its wake worker is stopped or killed around it, or its store does not answer in the middle of
it. One key, three calls: the provider holds op1 in flight (`paused`) while op2 and op3 wait
in the key's line, so each fault lands at op1's end, where its thread takes op2, without
timing luck.
"""

import signal
from pathlib import Path

import pytest
from claimkit import WAIT, Claim, Workers, unique, wait_until
from pynenc.invocation.status import InvocationStatus as S
from wake_run import loops

pytestmark = pytest.mark.slow  # real workers stopped and killed

WAKE = {"runner": "wake", "dead_after": "3", "longest_call": "2"}
TAKEN = "taken by a thread that handed a key on"


def test_a_draining_worker_takes_no_handed_call(claim: Claim, workers: Workers) -> None:
    """SIGTERM the worker while op1 is in flight: the drain waits for op1, and op1's thread,
    its runner stopping, leaves op2 on the queue (its loop woken, not run) rather than run it;
    the next worker runs op2 and op3, each once. Checked by mutation: with WakeRunner._run
    taking whatever its runner's state (`ran` for `ran and self.running`), the draining
    worker ran op2 and op3 itself and this test failed."""
    acct, first = unique(), workers.start(**WAKE)
    with claim.provider.paused():
        calls = [claim.tasks.call_keyed(acct, "op1")]
        claim.provider.wait_in_flight(acct)
        calls += [claim.tasks.call_keyed(acct, op) for op in ("op2", "op3")]
        first.signal(signal.SIGTERM)
        wait_until(lambda: first.logged("Draining 1 call(s)"), WAIT, "the drain to begin")
    assert first.proc.wait(WAIT) == 0
    ids = [call.invocation_id for call in calls]
    assert claim.final(ids[0]) == [S.SUCCESS]
    assert [claim.status(i).is_final() for i in ids[1:]] == [False, False]
    assert TAKEN not in loops(first.log_path.read_text())
    workers.start(**WAKE)
    assert claim.final(*ids) == [S.SUCCESS] * 3
    assert claim.provider.ops(acct) == ["op1", "op2", "op3"]
    assert claim.provider.counts(acct) == {"calls": 3, "applied": 3, "collisions": 0, "fenced": 0}


R, P, Q = S.RUNNING, S.PENDING, S.REGISTERED  # at the kill, besides op1's SUCCESS


@pytest.mark.parametrize(
    ("step", "keep", "at_kill", "moved"),
    [
        ("dequeue", "", [S.SUCCESS, Q, Q], (1, "holds its key again")),
        ("dequeue", "1", [R, Q, Q], (0, "recovered from a dead runner")),
        ("take", "", [S.SUCCESS, P, Q], (1, "recovered from a dead runner")),
        ("take", "1", [S.SUCCESS, R, Q], (1, "recovered from a dead runner")),
    ],
)
def test_a_worker_killed_as_its_thread_takes_the_handed_call(
    claim: Claim, workers: Workers, step: str, keep: str, at_kill: list[S], moved: tuple
) -> None:
    """SIGKILL the worker the moment op1's thread has taken op2 off the queue (before its claim)
    or claimed it (before it runs). Without kept connections, op1's outcome is stored first and
    the next worker's sweep moves op2 on (healed as a holder on no queue, or recovered as
    PENDING too long). With them, op1's result and the take are one step: a kill before the
    take is claimed undoes op1's outcome with it, and op1, RUNNING on a dead runner, is
    recovered and run again (in the sample, the same Idempotency-Key: replayed, not applied);
    once claimed and committed, op2 is RUNNING and recovered. op2 and op3 run once each.
    Checked by mutation: with heal_holders finding no holder off the queue (`again` always
    empty), op2 of "dequeue" never ran and final() gave up; with recover_in_store never
    finding a PENDING call lost, op2 of "take" waited for pynenc's own recovery (a cron, once
    a minute) and the sweep's line was missing."""
    acct, first = unique(), workers.start(**WAKE, take_fault=step, keep=keep)
    with claim.provider.paused():
        calls = [claim.tasks.call_keyed(acct, "op1")]
        claim.provider.wait_in_flight(acct)
        calls += [claim.tasks.call_keyed(acct, op) for op in ("op2", "op3")]
    assert first.proc.wait(WAIT) == -signal.SIGKILL
    ids = [call.invocation_id for call in calls]
    assert [claim.status(i) for i in ids] == at_kill
    second = workers.start(**WAKE, keep=keep)
    assert claim.final(*ids) == [S.SUCCESS] * 3
    for at in (0, 1):
        for line in ("holds its key again", "recovered from a dead runner"):
            assert second.logged(f"invocation:{ids[at]} {line}") is ((at, line) == moved)
    again = at_kill[0] is R  # op1 answered, its outcome undone with the take: run again
    assert claim.provider.ops(acct) == ["op1"] * (1 + again) + ["op2", "op3"]
    applied = 3 + again
    assert claim.provider.counts(acct) == {
        "calls": applied,
        "applied": applied,
        "collisions": 0,
        "fenced": 0,
    }


def test_a_worker_killed_as_its_loop_takes_a_call_leaves_it_on_the_queue(
    claim: Claim, workers: Workers
) -> None:
    """With kept connections the loop takes a call off the queue and claims it in one step, as
    a hand-over's thread does: SIGKILL the worker between the two and the step is undone. The
    call is still on the queue, and the next worker runs it once, with no sweep moving it.
    Checked by mutation: with the loop's step split (the `self._one()` around it in
    AtomicClaim.get_additional_invocations_to_run made a nullcontext), the killed look had
    taken the call off the queue for good (left for a sweep to heal) and this test failed."""
    acct, first = unique(), workers.start(**WAKE, take_fault="look", keep="1")
    call = claim.tasks.call_keyed(acct, "op1")
    assert first.proc.wait(WAIT) == -signal.SIGKILL
    assert claim.status(call.invocation_id) == S.REGISTERED
    assert claim.app.broker.count_invocations() == 1
    second = workers.start(**WAKE, keep="1")
    assert claim.final(call.invocation_id) == [S.SUCCESS]
    assert not second.logged(f"invocation:{call.invocation_id} holds its key again")
    assert claim.provider.ops(acct) == ["op1"]
    assert claim.provider.counts(acct) == {"calls": 1, "applied": 1, "collisions": 0, "fenced": 0}


@pytest.mark.parametrize("keep", ["", "1"])
def test_a_store_that_stops_answering_after_the_take_dequeues_leaves_the_call_queued(
    claim: Claim, workers: Workers, keep: str
) -> None:
    """The store does not answer the read of op2 that follows its take off the queue, before
    its claim: op2 stays on the queue for the loop (keyclaim.handover: "it stays on the queue
    and the runner's loop is woken for it"), not off it until a sweep heals its key, and op2
    and op3 run once each. Without kept connections the dequeue commits alone: checked by
    mutation, with the read outside HandOver._take's try (as it was first), op2 was off the
    queue until a sweep healed its key and this test failed."""
    acct, worker = unique(), workers.start(**WAKE, take_fault="blink", keep=keep)
    with claim.provider.paused():
        calls = [claim.tasks.call_keyed(acct, "op1")]
        claim.provider.wait_in_flight(acct)
        calls += [claim.tasks.call_keyed(acct, op) for op in ("op2", "op3")]
    ids = [call.invocation_id for call in calls]
    assert claim.final(*ids) == [S.SUCCESS] * 3
    assert not worker.logged(f"invocation:{ids[1]} holds its key again")
    assert claim.provider.ops(acct) == ["op1", "op2", "op3"]
    assert claim.provider.counts(acct) == {"calls": 3, "applied": 3, "collisions": 0, "fenced": 0}


def test_a_worker_stopped_once_its_thread_took_the_handed_call_is_fenced_as_it_resumes(
    claim: Claim, workers: Workers
) -> None:
    """SIGSTOP the worker the moment op1's thread has taken op2, with kept connections: op2 is
    RUNNING there (stored in the take's step) before it is sent. The next worker recovers it
    from the silent runner and runs op2 and op3; woken, the stopped thread runs op2 anyway (its
    RUNNING was stored with the take, so nothing refuses it before the provider): the newer
    token fences it, and its outcome is not stored. The stop is the thread's own (a SIGSTOP
    sent to the process stopped it only once another thread took the signal: under load it had
    sent op2 by then, and op2 was applied twice). Checked by mutation: with `_still_holds`
    always true, the woken worker's outcome reached the store and `outlived its claim` never
    appeared."""
    acct, first = unique(), workers.start(**WAKE, take_fault="stop", keep="1")
    with claim.provider.paused():
        calls = [claim.tasks.call_keyed(acct, "op1")]
        claim.provider.wait_in_flight(acct)
        calls += [claim.tasks.call_keyed(acct, op) for op in ("op2", "op3")]
    ids = [call.invocation_id for call in calls]
    stat = Path(f"/proc/{first.proc.pid}/stat")
    wait_until(lambda: stat.read_text().split()[2] == "T", WAIT, "the worker to stop")
    assert [claim.status(i) for i in ids] == [S.SUCCESS, S.RUNNING, S.REGISTERED]
    second = workers.start(**WAKE, keep="1")
    assert claim.final(*ids) == [S.SUCCESS] * 3
    assert second.logged(f"invocation:{ids[1]} recovered from a dead runner")
    first.signal(signal.SIGCONT)
    wait_until(lambda: first.logged("outlived its claim"), WAIT, "the stale call's outcome")
    claim.provider.wait_in_flight(acct, 0)
    assert claim.final(*ids) == [S.SUCCESS] * 3
    assert claim.settled_history(ids[1]).count(S.SUCCESS) == 1
    assert claim.provider.ops(acct) == ["op1", "op2", "op3"]
    assert claim.provider.counts(acct) == {"calls": 4, "applied": 3, "collisions": 0, "fenced": 1}
