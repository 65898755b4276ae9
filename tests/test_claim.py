"""The multi-worker race, forced deterministically, and the atomic claim that closes it.

Two claimers stand for two runner processes: each has its own orchestrator instance and runner
context on the same SQLite file, and runs pynenc's real claiming loop (`get_invocations_to_run`)
in a thread of its own. A barrier decides the interleaving, so nothing depends on timing luck.
"""

import os
import signal
import threading
from collections.abc import Callable, Iterator

import pytest
from pynenc.exceptions import InvocationStatusTransitionError
from pynenc.invocation.dist_invocation import DistributedInvocation
from pynenc.invocation.status import InvocationStatus as S
from pynenc.orchestrator.sqlite_orchestrator import SQLiteOrchestrator
from pynenc.runner.runner_context import RunnerContext

import tasks
from demo import atomic_claim, pynenc_versions
from demo.atomic_claim import AtomicClaimSQLiteOrchestrator
from demo.processes import wait_until
from demo.provider import Provider
from helpers import WAIT, account, history, paused, status_of, unique, wait_final, wait_in_flight

DEAD_AFTER = 3.0


class Pausing:
    """A claimer that can be stopped right after it looked at the key, before it writes.

    `checked` is set when it gets there; it waits there until `go` is set.
    """

    def __init__(self) -> None:
        self.checked, self.go = threading.Event(), threading.Event()

    def pause(self) -> None:
        self.checked.set()
        assert self.go.wait(WAIT), "the test never let the paused claimer go on"


class StockClaimer(SQLiteOrchestrator):
    """Stock pynenc; when given a Pausing, it stops between its check and its claim."""

    pausing: Pausing | None = None

    def is_candidate_to_run_by_concurrency_control(self, invocation: object) -> bool:
        free = super().is_candidate_to_run_by_concurrency_control(invocation)
        if self.pausing:
            self.pausing.pause()
        return free


class AtomicClaimer(AtomicClaimSQLiteOrchestrator):
    """The atomic claim; when given a Pausing, it stops after its check, inside its transaction."""

    pausing: Pausing | None = None

    def __init__(self, app: object) -> None:
        super().__init__(app)
        self.started = threading.Event()

    def get_invocations_to_run(self, *args: object) -> Iterator[DistributedInvocation]:
        self.started.set()
        return super().get_invocations_to_run(*args)

    def decide(self, *args: object) -> atomic_claim.Decision:
        if self.pausing:
            self.pausing.pause()
        return super().decide(*args)


class BothChecked(SQLiteOrchestrator):
    """Stock run-time check (DistributedInvocation.run), both workers past it before either runs."""

    barrier: threading.Barrier

    def is_authorize_to_run_by_concurrency_control(self, invocation: object) -> bool:
        free = super().is_authorize_to_run_by_concurrency_control(invocation)
        self.barrier.wait()
        return free


def claimer[T: SQLiteOrchestrator](cls: type[T]) -> tuple[T, RunnerContext]:
    """A stand-in for one runner process: its own orchestrator and a live runner context."""
    orchestrator = cls(tasks.app)
    ctx = RunnerContext(runner_cls="ThreadRunner")
    orchestrator.register_runner_heartbeats([ctx.runner_id])
    return orchestrator, ctx


def take(orchestrator: SQLiteOrchestrator, ctx: RunnerContext) -> list[DistributedInvocation]:
    """One pass of pynenc's claiming loop for one free slot, as a ThreadRunner does it."""
    return list(orchestrator.get_invocations_to_run(1, ctx))


def race(cls: type[SQLiteOrchestrator]) -> tuple[list, list, RunnerContext, RunnerContext]:
    """Claimer 1 looks at the key and stops; claimer 2 claims meanwhile; then claimer 1 goes on."""
    (one, ctx1), (two, ctx2) = claimer(cls), claimer(cls)
    one.pausing = Pausing()
    taken: dict[str, list] = {}
    first = threading.Thread(target=lambda: taken.setdefault("one", take(one, ctx1)))
    second = threading.Thread(target=lambda: taken.setdefault("two", take(two, ctx2)))
    first.start()
    try:
        assert one.pausing.checked.wait(WAIT), "claimer 1 never reached its check"
        second.start()
        if isinstance(two, AtomicClaimer):
            # Claimer 1 holds the write lock: whatever claimer 2 does next (take an invocation
            # off the queue, look at the key) waits until claimer 1 has written its claim.
            assert two.started.wait(WAIT), "claimer 2 never started"
        else:
            second.join(WAIT)
    finally:
        one.pausing.go.set()
        first.join(WAIT)
        second.join(WAIT)
    assert not first.is_alive() and not second.is_alive(), "a claimer is stuck"
    return taken["one"], taken["two"], ctx1, ctx2


def test_stock_pynenc_lets_two_workers_call_one_account_at_once(
    provider: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    acct = unique()
    first = tasks.call_keyed(acct, "fetch_profile")
    second = tasks.call_keyed(acct, "list_invoices")

    got_one, got_two, ctx1, ctx2 = race(StockClaimer)

    # Both read "the key is free" before either wrote its claim: both were granted.
    assert len(got_one) == len(got_two) == 1
    assert [status_of(i.invocation_id) for i in (first, second)] == [S.PENDING, S.PENDING]

    # Each worker runs what it claimed; its last check before RUNNING races the same way.
    both = BothChecked(tasks.app)
    both.barrier = threading.Barrier(2, timeout=WAIT)
    monkeypatch.setattr(tasks.app, "_orchestrator", both)
    runs = [
        threading.Thread(target=got_one[0].run, args=(ctx1,)),
        threading.Thread(target=got_two[0].run, args=(ctx2,)),
    ]
    with paused(provider):
        for run in runs:
            run.start()
        wait_in_flight(provider, acct, 2)
    for run in runs:
        run.join(WAIT)
    assert wait_final(first.invocation_id, second.invocation_id) == [S.SUCCESS, S.SUCCESS]
    assert account(provider, acct) == {"calls": 2, "collisions": 1, "in_flight": 0}


@pytest.mark.parametrize(
    "task_name, loser_status",
    [("call_keyed", S.REROUTED), ("call_keyed_drop", S.CONCURRENCY_CONTROLLED_FINAL)],
)
def test_atomic_claim_lets_exactly_one_worker_in(
    provider: Provider, task_name: str, loser_status: S
) -> None:
    task = getattr(tasks, task_name)
    acct = unique()
    first, second = task(acct, "fetch_profile"), task(acct, "list_invoices")

    got_one, got_two, ctx1, ctx2 = race(AtomicClaimer)

    # Claimer 1 checked first and holds the claim; claimer 2 saw it and lost.
    assert len(got_one) == 1 and got_two == []
    winner = got_one[0]
    loser = second if winner.invocation_id == first.invocation_id else first
    assert status_of(winner.invocation_id) == S.PENDING
    assert status_of(loser.invocation_id) == loser_status
    assert S.PENDING not in history(loser.invocation_id)

    winner.run(ctx1)
    if loser_status is S.REROUTED:
        # Back on the queue, never lost: the next claim, with the key free, runs it.
        third, ctx3 = claimer(AtomicClaimer)
        (again,) = take(third, ctx3)
        assert again.invocation_id == loser.invocation_id
        again.run(ctx3)
    expected = 2 if loser_status is S.REROUTED else 1
    assert account(provider, acct) == {"calls": expected, "collisions": 0, "in_flight": 0}


def test_a_rerouted_drop_crashes_stock_pynenc_and_is_queued_again_by_the_claim(
    provider: Provider,
) -> None:
    """pynenc forbids REROUTED -> CONCURRENCY_CONTROLLED_FINAL; stock raises in the runner loop."""
    acct = unique()
    holder = tasks.call_keyed_drop(acct, "fetch_profile")
    rerouted = tasks.call_keyed_drop(acct, "list_invoices")
    stock, ctx = claimer(StockClaimer)
    # The holder is claimed; the other was claimed once, then sent back (as recovery does).
    (claimed,) = [inv for inv in take(stock, ctx) if inv.invocation_id == holder.invocation_id]
    stock.set_invocation_status(rerouted.invocation_id, S.PENDING, ctx)
    stock.reroute_invocations({rerouted.invocation_id}, ctx)
    assert status_of(rerouted.invocation_id) == S.REROUTED

    with pytest.raises(InvocationStatusTransitionError):
        take(stock, ctx)
    assert status_of(rerouted.invocation_id) == S.REROUTED
    atomic, ctx2 = claimer(AtomicClaimer)
    atomic._route(rerouted.invocation_id)  # the crash took it off the queue: put it back

    assert take(atomic, ctx2) == []
    assert status_of(rerouted.invocation_id) == S.REROUTED
    assert history(rerouted.invocation_id)[-2:] == [S.CONCURRENCY_CONTROLLED, S.REROUTED]
    assert tasks.app.broker.count_invocations() == 1  # back on the queue, not lost


def test_a_killed_worker_holds_its_account_only_for_the_dead_after_window(
    provider: Provider, start_worker: Callable
) -> None:
    claim = {"DEMO_ATOMIC_CLAIM": "1", "DEMO_DEAD_AFTER": str(DEAD_AFTER)}
    doomed = start_worker(claim)
    acct = unique()
    with paused(provider):
        first = tasks.call_keyed(acct, "fetch_profile")
        wait_in_flight(provider, acct)
        os.killpg(doomed.proc.pid, signal.SIGKILL)
        doomed.proc.wait(WAIT)
    # The dead worker's call ends at the provider; the invocation still says RUNNING.
    wait_until(lambda: account(provider, acct)["in_flight"] == 0, WAIT, "the cut call to end")
    assert status_of(first.invocation_id) == S.RUNNING
    second = tasks.call_keyed(acct, "list_invoices")

    start_worker(claim)
    # After DEAD_AFTER without a heartbeat the first is recovered; both then run, one at a time.
    statuses = [
        wait_until(lambda i=i: (s := status_of(i)).is_final() and s, DEAD_AFTER + WAIT, i)
        for i in (first.invocation_id, second.invocation_id)
    ]
    assert statuses == [S.SUCCESS, S.SUCCESS]
    assert S.RUNNING_RECOVERY in history(first.invocation_id)
    assert account(provider, acct) == {"calls": 3, "collisions": 0, "in_flight": 0}


def test_the_claim_refuses_an_untested_pynenc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pynenc_versions, "version", lambda name: "9.9.9")
    with pytest.raises(pynenc_versions.UntestedVersion) as refused:
        atomic_claim.check_versions("sqlite")
    message = str(refused.value)
    assert "\n" not in message
    assert "pynenc 0.3.1" in message and "pynenc 9.9.9" in message
