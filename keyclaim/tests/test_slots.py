"""Up to N calls per key (keyclaim.limit): real workers killed mid-call, each slot fenced alone.

Real pynenc workers run claimapp.app (its `call_two`: two calls per key at once) on the test's
own database; the test's provider holds calls in flight (`paused`) and judges each key by two
calls in flight, its tokens compared per slot.
"""

import signal

import pytest
from claimkit import WAIT, Claim, Workers, unique, wait_until
from pynenc.invocation.status import InvocationStatus as S

pytestmark = pytest.mark.slow  # real workers killed

SHORT = {"dead_after": "3", "longest_call": "2"}


def test_a_killed_slot_holder_comes_back_after_the_window_and_its_cut_call_is_fenced(
    claim: Claim, workers: Workers
) -> None:
    """Three calls for a key of two slots: two in flight on one worker, the third in line.
    SIGKILL that worker mid-call: after the dead-after window, each cut call runs again on its
    own slot with that slot's next token, which fences its own cut call still at the provider
    and never the other slot's new call; then the third runs, and nothing waits or is stuck.
    Both calls are on the worker killed: a call held on the other worker past the window would
    outlive its 2 s timeout, a failure the test would have made.

    Checked by mutation: with every call sent as slot 0 (`keyclaim.slot` answering 0), one
    slot's newer token fenced the other slot's valid call, a call failed as Fenced, and this
    test failed. (One sequence of tokens per key instead of per slot, keys.fence_key answering
    the key for every slot, passed: tokens still grow within each slot. What keeps one slot's
    claim from fencing another's call is that the provider compares them per slot.)"""
    acct = unique()
    claim.provider.keys[acct].slots = 2
    workers.start(**SHORT)
    with claim.provider.paused():
        first = claim.tasks.call_two(acct, "op1")
        second = claim.tasks.call_two(acct, "op2")
        claim.provider.wait_in_flight(acct, 2)
        third = claim.tasks.call_two(acct, "op3")
        killed = workers.holding(first.invocation_id)
        assert workers.holding(second.invocation_id) is killed
        workers.start(**SHORT)  # the one that recovers them: none of its calls is held
        killed.signal(signal.SIGKILL)
        killed.proc.wait(WAIT)
        # After the window: the cut calls sent again, while the provider still holds them.
        claim.provider.wait_for(
            "the cut calls sent again", lambda: len(claim.provider.keys[acct].calls) == 4
        )
    ids = (first.invocation_id, second.invocation_id, third.invocation_id)
    assert claim.final(*ids) == [S.SUCCESS, S.SUCCESS, S.SUCCESS]
    claim.provider.wait_in_flight(acct, 0)
    assert claim.provider.counts(acct) == {"calls": 5, "applied": 3, "collisions": 0, "fenced": 2}
    assert claim.provider.ops(acct) == ["op1", "op2", "op3"]
    assert claim.provider.keys[acct].peak == 2
    assert S.RUNNING_RECOVERY in claim.history(first.invocation_id)
    assert claim.app.orchestrator.waiting() == 0


def test_a_call_waiting_for_its_rate_is_released_when_the_worker_that_parked_it_died(
    claim: Claim, workers: Workers
) -> None:
    """One call per 4 s per key (claimapp's call_rated): the second call waits for the window,
    off the queue, its release due in the process that saw it wait. SIGKILL that process: the
    other worker's sweep releases it once due, and it runs; nothing stays waiting.

    Checked by mutation: without the sweep's release (`release_due` left out of
    `recover_silent_runners`), the second call stayed registered past the deadline and this
    test failed."""
    acct = unique()
    started = [workers.start(**SHORT), workers.start(**SHORT)]
    first = claim.tasks.call_rated(acct, "op1")
    assert claim.final(first.invocation_id) == [S.SUCCESS]
    second = claim.tasks.call_rated(acct, "op2")
    waited = wait_until(
        lambda: next((w for w in started if w.logged("for its key's rate window")), None),
        WAIT,
        "a worker to see the second call wait for its rate",
    )
    waited.signal(signal.SIGKILL)
    waited.proc.wait(WAIT)
    assert claim.final(second.invocation_id) == [S.SUCCESS]
    assert claim.provider.ops(acct) == ["op1", "op2"]
    assert claim.provider.counts(acct)["collisions"] == 0
    assert claim.app.orchestrator.waiting() == 0
