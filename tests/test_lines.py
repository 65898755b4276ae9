"""Account lines, with real workers: a blocked call waits in its account's line, in order.

The key passes to the next call on every way out. Counts and order, never durations."""

import threading
from collections.abc import Iterator

import pytest
from pynenc.invocation.dist_invocation import ReusedInvocation
from pynenc.invocation.status import InvocationStatus as S

import enqueue
import tasks
from demo.processes import wait_until
from demo.provider import Provider
from demo.scenarios import QUIET_ACCOUNTS, Shape
from demo.show import View
from demo.stack import Stack
from demo.steps import Stage
from helpers import (
    WAIT,
    account,
    counts,
    paused,
    settled_history,
    status_of,
    unique,
    wait_in_flight,
)
from tools import injections

CLAIM = {"DEMO_ATOMIC_CLAIM": "1"}


@pytest.fixture(scope="module", autouse=True)
def claim_workers(stack: Stack) -> Iterator[None]:
    """Two workers with the claim, for every test here: none of them stops one."""
    workers = injections.add_workers(stack, 2, CLAIM)
    try:
        yield
    finally:
        stack.stop(workers)


def final(*invocation_ids: str) -> list[S]:
    return [
        wait_until(lambda i=i: (s := status_of(i)).is_final() and s, 2 * WAIT, f"{i} to finish")
        for i in invocation_ids
    ]


def claims() -> int:
    """Claims of call_keyed invocations so far (pynenc's own tasks are claimed too)."""
    return tasks.app.orchestrator.claim_counts(tasks.call_keyed.task_id.key)["claims"]


def test_a_backlog_runs_in_enqueue_order_once_each_without_churn(claim_app: Provider) -> None:
    """Six calls for one account, two workers: the first is held in flight, the other five
    park as they are registered. Each is claimed exactly once, when its turn comes, and the
    provider sees them in enqueue order. Checked by mutation: with parked calls also put on
    the queue, at registration and at each park (rerouting's churn), the 6 calls took 24 to 30
    claims, and this test fails."""
    acct = unique()
    before = claims()
    ops = [f"op{n}" for n in range(6)]
    with paused(claim_app):
        calls = [tasks.call_keyed(acct, ops[0])]
        wait_in_flight(claim_app, acct)
        calls += [tasks.call_keyed(acct, op) for op in ops[1:]]
        assert tasks.app.orchestrator.waiting() == 5
    ids = [c.invocation_id for c in calls]
    assert final(*ids) == [S.SUCCESS] * 6
    assert [c["op"] for c in claim_app.timeline() if c["account_id"] == acct] == ops
    assert account(claim_app, acct)["collisions"] == 0
    assert claims() - before == 6
    for invocation_id in ids:
        assert settled_history(invocation_id) == [S.REGISTERED, S.PENDING, S.RUNNING, S.SUCCESS]
    assert tasks.app.orchestrator.waiting() == 0


def test_a_failing_call_hands_its_account_on(claim_app: Provider) -> None:
    """A holder whose call fails ends FAILED, and the call parked behind it runs. The holder is
    held at the provider while the next call registers behind it, and fails there: a call with
    a newer token for its account arrives meanwhile, so the provider answers it "fenced", which
    the task raises. (A call refused before it left the worker, an op the provider cannot take,
    could end before the next call registered, and the test then failed on a loaded machine.)"""
    acct = unique()
    with paused(claim_app):
        failing = tasks.call_keyed(acct, "op1")
        wait_in_flight(claim_app, acct)
        after = tasks.call_keyed(acct, "op2")
        assert status_of(after.invocation_id) == S.REGISTERED  # parked behind the holder
        token = tasks.app.orchestrator.fence_token(failing.invocation_id)
        newer = threading.Thread(
            target=claim_app.request,
            args=("POST", f"/call/{acct}/newer"),
            kwargs={"token": token + 1},
        )
        newer.start()
        wait_until(lambda: account(claim_app, acct)["fenced"] == 1, WAIT, "the holder fenced")
    newer.join(WAIT)
    assert final(failing.invocation_id, after.invocation_id) == [S.FAILED, S.SUCCESS]
    assert tasks.app.orchestrator.waiting() == 0


def test_a_burst_for_a_busy_account_merges_into_the_one_waiting_call(claim_app: Provider) -> None:
    """registration_concurrency merges only into REGISTERED invocations: the parked call is
    one, so a burst behind a running refresh makes one more call, not one per event."""
    acct = unique()
    with paused(claim_app):
        first = tasks.refresh_once(acct)
        wait_in_flight(claim_app, acct)
        burst = [tasks.refresh_once(acct) for _ in range(8)]
    new = [b for b in burst if not isinstance(b, ReusedInvocation)]
    assert len(new) == 1 and {b.invocation_id for b in burst} == {new[0].invocation_id}
    assert final(first.invocation_id, new[0].invocation_id) == [S.SUCCESS, S.SUCCESS]
    assert account(claim_app, acct) == counts(calls=2)


def test_a_busy_accounts_backlog_runs_in_order_beside_the_quiet_ones(claim_app: Provider) -> None:
    """Scenario E with the lines: every call made once, the busy account's in enqueue order,
    3 status writes per call and no REROUTED. (Stock rerouting, in the bench: 24.5 writes, 10.7
    of them REROUTED, out of order.)"""
    shape = Shape(hold=0.02, backlog=12)
    noisy = enqueue.SCENARIOS["noisy"]
    outcome = enqueue.run(noisy, Stage(claim_app, shape, WAIT), View(charts=False))
    assert outcome.broken() == []
    assert (outcome.calls, outcome.collisions) == (12 + QUIET_ACCOUNTS, 0)
    figures = outcome.figures
    assert figures is not None and len(figures.quiet_waits) == QUIET_ACCOUNTS
    assert (figures.hot_calls, figures.hot_out_of_place) == (12, 0)
    assert (figures.writes, figures.reroutes) == (3.0, 0.0)
