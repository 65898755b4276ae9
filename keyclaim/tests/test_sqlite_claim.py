"""The multi-worker race on SQLite, forced deterministically, and the claim that closes it.

Two claimers stand for two runner processes: each has its own orchestrator instance and runner
context on the test's own SQLite file, and runs pynenc's real claiming loop
(`get_invocations_to_run`) in a thread of its own. Events decide the interleaving, so nothing
depends on timing luck.
"""

import inspect
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, closing

import pytest
from claimkit import (
    HERE,
    WAIT,
    Claim,
    Pausing,
    orchestrated_by,
    unique,
    wait_until,
    write_lock_held,
)
from pynenc import Pynenc
from pynenc.exceptions import InvocationStatusTransitionError
from pynenc.invocation.dist_invocation import DistributedInvocation
from pynenc.invocation.status import InvocationStatus as S
from pynenc.orchestrator.sqlite_orchestrator import SQLiteOrchestrator
from pynenc.runner.runner_context import RunnerContext

from keyclaim import transaction, versions
from keyclaim.clock import host_clock
from keyclaim.decision import Decision
from keyclaim.sqlite_claim import AtomicClaimSQLiteOrchestrator


class StockClaimer(SQLiteOrchestrator):
    """Stock pynenc; when given a Pausing, it stops between its check and its claim."""

    pausing: Pausing | None = None

    def is_candidate_to_run_by_concurrency_control(self, invocation: object) -> bool:
        free = super().is_candidate_to_run_by_concurrency_control(invocation)
        if self.pausing:
            self.pausing.pause()
        return free


class AtomicClaimer(AtomicClaimSQLiteOrchestrator):
    """The atomic claim, observed.

    With a Pausing it stops in `decide`, after reading the key, then at its first write, both
    inside its transaction.
    `reached` is set whenever it gets to `decide`; `blocked` when, about to take an invocation
    off the queue (its first write), it finds the database's write lock held by someone else.
    `claims` counts its claims; past `most_claims` it refuses to go on (a spinning loop).
    """

    pausing: Pausing | None = None
    most_claims = 100

    def __init__(self, app: object) -> None:
        super().__init__(app)
        self.reached, self.blocked = threading.Event(), threading.Event()
        self.claims = 0

    def claim_in_store(self, *args: object) -> Decision:
        self.claims += 1
        assert self.claims <= self.most_claims, "the claiming loop spins"
        return super().claim_in_store(*args)

    def _connect(self) -> sqlite3.Connection:
        """Each step's connection, with the statements it runs written down as they run."""
        conn = super()._connect()
        self.statements: list[str] = []
        conn.set_trace_callback(self.statements.append)
        return conn

    def transaction_so_far(self) -> list[str]:
        """The BEGINs and COMMITs of the current step so far."""
        return [s for s in self.statements if s.startswith(("BEGIN", "COMMIT"))]

    def decide(self, *args: object) -> Decision:
        self.reached.set()
        if self.pausing:
            self.pausing.pause()
        return super().decide(*args)

    def _write_status(self, *args: object) -> None:
        if self.pausing:
            self.pausing.pause()
        super()._write_status(*args)

    def _retriever(self, *hooks: object) -> Callable[[], object]:
        retrieve = super()._retriever(*hooks)

        def observed() -> object:
            if write_lock_held(self.sqlite_db_path):
                self.blocked.set()
            return retrieve()

        return observed


class BothChecked(SQLiteOrchestrator):
    """Stock run-time check (DistributedInvocation.run), both workers past it before either runs."""

    barrier: threading.Barrier

    def is_authorize_to_run_by_concurrency_control(self, invocation: object) -> bool:
        free = super().is_authorize_to_run_by_concurrency_control(invocation)
        self.barrier.wait()
        return free


def claimer[T: SQLiteOrchestrator](app: Pynenc, cls: type[T]) -> tuple[T, RunnerContext]:
    """A stand-in for one runner process: its own orchestrator and a live runner context."""
    orchestrator = cls(app)
    ctx = RunnerContext(runner_cls="ThreadRunner")
    orchestrator.register_runner_heartbeats([ctx.runner_id])
    return orchestrator, ctx


def stock_registration(claim: Claim) -> AbstractContextManager[None]:
    """Calls registered the stock way: on the queue, whatever their key's state."""
    return orchestrated_by(claim.app, SQLiteOrchestrator(claim.app))


def take(orchestrator: SQLiteOrchestrator, ctx: RunnerContext) -> list[DistributedInvocation]:
    """One pass of pynenc's claiming loop for one free slot, as a ThreadRunner does it."""
    return list(orchestrator.get_invocations_to_run(1, ctx))


def race(
    app: Pynenc, cls: type[SQLiteOrchestrator]
) -> tuple[list, list, RunnerContext, RunnerContext]:
    """Claimer 1 looks at the key and stops; claimer 2 claims meanwhile; then claimer 1 goes on."""
    (one, ctx1), (two, ctx2) = claimer(app, cls), claimer(app, cls)
    atomic = isinstance(two, AtomicClaimer)
    one.pausing = Pausing(stops=2 if atomic else 1)
    taken: dict[str, list] = {}
    first = threading.Thread(target=lambda: taken.setdefault("one", take(one, ctx1)))
    second = threading.Thread(target=lambda: taken.setdefault("two", take(two, ctx2)))
    first.start()
    try:
        assert one.pausing.checked.wait(WAIT), "claimer 1 never reached its check"
        second.start()
        if atomic:
            # Claimer 1 holds the write lock from its read to its write: claimer 2, about to
            # take an invocation off the queue, finds it held, and has not looked at the key.
            wait_until(lambda: two.blocked.is_set() or two.reached.is_set(), WAIT, "claimer 2")
            assert two.blocked.is_set(), "claimer 2 was not blocked while claimer 1 was held"
            assert not two.reached.is_set(), "claimer 2 checked the key while claimer 1 was held"
            # And still after its decision, as it writes it.
            one.pausing.go[0].set()
            assert one.pausing.reached[1].wait(WAIT), "claimer 1 never came to write"
            assert one.transaction_so_far() == ["BEGIN IMMEDIATE"], "check and write split"
            assert not two.reached.is_set(), "claimer 2 checked the key before claimer 1 wrote"
        else:
            second.join(WAIT)
    finally:
        one.pausing.let_go()
        first.join(WAIT)
        second.join(WAIT)
    assert not first.is_alive() and not second.is_alive(), "a claimer is stuck"
    return taken["one"], taken["two"], ctx1, ctx2


def test_stock_pynenc_lets_two_workers_call_one_account_at_once(
    claim: Claim, monkeypatch: pytest.MonkeyPatch
) -> None:
    acct = unique()
    with stock_registration(claim):
        first = claim.tasks.call_keyed(acct, "fetch_profile")
        second = claim.tasks.call_keyed(acct, "list_invoices")

    got_one, got_two, ctx1, ctx2 = race(claim.app, StockClaimer)

    # Both read "the key is free" before either wrote its claim: both were granted.
    assert len(got_one) == len(got_two) == 1
    assert [claim.status(i.invocation_id) for i in (first, second)] == [S.PENDING, S.PENDING]

    # Each worker runs what it claimed; its last check before RUNNING races the same way.
    both = BothChecked(claim.app)
    both.barrier = threading.Barrier(2, timeout=WAIT)
    monkeypatch.setattr(claim.app, "_orchestrator", both)
    runs = [
        threading.Thread(target=got_one[0].run, args=(ctx1,)),
        threading.Thread(target=got_two[0].run, args=(ctx2,)),
    ]
    with claim.provider.paused():
        for run in runs:
            run.start()
        claim.provider.wait_in_flight(acct, 2)
    for run in runs:
        run.join(WAIT)
    assert claim.final(first.invocation_id, second.invocation_id) == [S.SUCCESS, S.SUCCESS]
    assert claim.provider.counts(acct) == {"calls": 2, "applied": 2, "collisions": 1, "fenced": 0}


@pytest.mark.parametrize(
    "task_name, loser_status",
    [("call_keyed", S.REGISTERED), ("call_keyed_drop", S.CONCURRENCY_CONTROLLED_FINAL)],
)
def test_atomic_claim_lets_exactly_one_worker_in(
    claim: Claim, monkeypatch: pytest.MonkeyPatch, task_name: str, loser_status: S
) -> None:
    """Checked by mutation: with the claim's read and its write split into two transactions
    (`claim_in_store` committing after the read, then writing in a second BEGIN IMMEDIATE),
    claimer 2 is not blocked and checks the key while claimer 1 is held; with the commit
    after the decision instead, claimer 1 holds no lock as it comes to write: either way this
    test fails."""
    task = getattr(claim.tasks, task_name)
    acct = unique()
    # Registered the stock way, so both are on the queue for the two claimers to race for.
    with stock_registration(claim):
        first, second = task(acct, "fetch_profile"), task(acct, "list_invoices")

    got_one, got_two, ctx1, ctx2 = race(claim.app, AtomicClaimer)

    # Claimer 1 checked first and holds the claim; claimer 2 saw it and lost: it waits in the
    # key's line (B) or is dropped (C).
    assert len(got_one) == 1 and got_two == []
    winner = got_one[0]
    loser = second if winner.invocation_id == first.invocation_id else first
    assert claim.status(winner.invocation_id) == S.PENDING
    assert claim.status(loser.invocation_id) == loser_status
    assert S.PENDING not in claim.history(loser.invocation_id)

    monkeypatch.setattr(claim.app, "_orchestrator", AtomicClaimSQLiteOrchestrator(claim.app))
    winner.run(ctx1)
    if loser_status is S.REGISTERED:
        # Its turn came with the winner's end: handed the key and queued, never lost.
        third, ctx3 = claimer(claim.app, AtomicClaimer)
        (again,) = take(third, ctx3)
        assert again.invocation_id == loser.invocation_id
        again.run(ctx3)
    expected = 2 if loser_status is S.REGISTERED else 1
    assert claim.provider.counts(acct) == {
        "calls": expected,
        "applied": expected,
        "collisions": 0,
        "fenced": 0,
    }


def test_a_rerouted_drop_crashes_stock_pynenc_and_waits_in_line_with_the_claim(
    claim: Claim, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pynenc forbids REROUTED -> CONCURRENCY_CONTROLLED_FINAL; stock raises in the runner loop.
    With the claim, the call waits in its key's line and runs once the key is free."""
    acct = unique()
    with stock_registration(claim):
        holder = claim.tasks.call_keyed_drop(acct, "fetch_profile")
        rerouted = claim.tasks.call_keyed_drop(acct, "list_invoices")
    stock, ctx = claimer(claim.app, StockClaimer)
    # The holder is claimed; the other was claimed once, then sent back (as recovery does).
    assert holder.invocation_id in [inv.invocation_id for inv in take(stock, ctx)]
    stock.set_invocation_status(rerouted.invocation_id, S.PENDING, ctx)
    stock.reroute_invocations({rerouted.invocation_id}, ctx)
    assert claim.status(rerouted.invocation_id) == S.REROUTED

    with pytest.raises(InvocationStatusTransitionError):
        take(stock, ctx)
    assert claim.status(rerouted.invocation_id) == S.REROUTED
    # With the claim, from a clean queue: a new call holds the key, then the rerouted drop
    # comes back to the queue.
    stock.set_invocation_status(holder.invocation_id, S.RUNNING, ctx)
    stock.set_invocation_status(holder.invocation_id, S.SUCCESS, ctx)
    claim.app.broker.purge()
    atomic, ctx2 = claimer(claim.app, AtomicClaimer)
    monkeypatch.setattr(claim.app, "_orchestrator", atomic)
    busy = claim.tasks.call_keyed_drop(acct, "refresh_usage")
    assert [inv.invocation_id for inv in take(atomic, ctx2)] == [busy.invocation_id]
    atomic._route(rerouted.invocation_id)

    assert take(atomic, ctx2) == []
    assert claim.status(rerouted.invocation_id) == S.REROUTED
    assert (claim.app.broker.count_invocations(), atomic.waiting()) == (0, 1)  # in line, not lost
    atomic.set_invocation_status(busy.invocation_id, S.RUNNING, ctx2)
    atomic.set_invocation_status(busy.invocation_id, S.SUCCESS, ctx2)
    (again,) = take(atomic, ctx2)
    assert again.invocation_id == rerouted.invocation_id
    assert (claim.app.broker.count_invocations(), atomic.waiting()) == (0, 0)


def hold_the_key(
    claim: Claim, acct: str, task_name: str = "call_keyed"
) -> tuple[DistributedInvocation, AtomicClaimer, RunnerContext]:
    """An invocation of the task for acct, claimed and RUNNING under a live runner."""
    holder = getattr(claim.tasks, task_name)(acct, "op0")
    orchestrator, ctx = claimer(claim.app, AtomicClaimer)
    (claimed,) = take(orchestrator, ctx)
    assert claimed.invocation_id == holder.invocation_id
    orchestrator.set_invocation_status(holder.invocation_id, S.RUNNING, ctx)
    return holder, orchestrator, ctx


def test_a_blocking_invocation_whose_key_is_busy_waits_and_runs_later(claim: Claim) -> None:
    """An invocation others wait for is claimed through the blocking path too. Checked by
    mutation: when a busy key there wrote CONCURRENCY_CONTROLLED (the claim's first version),
    the invocation was no longer claimable once its turn came, and this test fails."""
    acct = unique()
    holder, orchestrator, holder_ctx = hold_the_key(claim, acct)
    waited = claim.tasks.call_keyed(acct, "op1")  # parked: the key is busy
    waiter = claim.tasks.call_unsafe(unique(), "waits")
    orchestrator.waiting_for_results(waiter.invocation_id, [waited.invocation_id])
    claim.app.broker.purge()  # the waiter's own entry: only the blocking path is left

    claiming, ctx = claimer(claim.app, AtomicClaimer)
    assert take(claiming, ctx) == []
    assert claim.status(waited.invocation_id) == S.REGISTERED  # as it was: still claimable

    orchestrator.set_invocation_status(holder.invocation_id, S.SUCCESS, holder_ctx)
    assert [inv.invocation_id for inv in take(claiming, ctx)] == [waited.invocation_id]
    assert claim.status(waited.invocation_id) == S.PENDING


def test_a_retry_on_a_busy_key_waits_in_line_without_spinning(claim: Claim) -> None:
    """A RETRY may only become PENDING, so a busy key can neither reroute nor drop it: it waits
    in the key's line like any blocked call. Checked by mutation: a blocked call put back on
    the queue instead (the churn of stock rerouting) is handed straight back to the same
    claiming pass, which claims it again and again (the claimer's count trips)."""
    acct = unique()
    holder, orchestrator, holder_ctx = hold_the_key(claim, acct, "call_keyed_drop")
    retry = claim.tasks.call_keyed_drop(acct, "op1")
    first_try, try_ctx = claimer(claim.app, AtomicClaimer)
    # As if it had been tried once under a worker that knew nothing of the key.
    StockClaimer(claim.app).set_invocation_status(retry.invocation_id, S.PENDING, try_ctx)
    StockClaimer(claim.app).set_invocation_status(retry.invocation_id, S.RUNNING, try_ctx)
    claim.app.broker.purge()
    # pynenc 0.3.1 takes the invocation's id here, 0.4.0 the invocation.
    takes = list(inspect.signature(SQLiteOrchestrator.set_invocation_retry).parameters)[1]
    retrying = retry if takes == "invocation" else retry.invocation_id
    first_try.set_invocation_retry(retrying, RuntimeError("429"), try_ctx)
    assert claim.status(retry.invocation_id) == S.RETRY

    claiming, ctx = claimer(claim.app, AtomicClaimer)
    claiming.most_claims = 5
    assert take(claiming, ctx) == []
    assert claiming.claims == 1
    assert (claim.app.broker.count_invocations(), claiming.waiting()) == (0, 1)

    orchestrator.set_invocation_status(holder.invocation_id, S.SUCCESS, holder_ctx)
    (again,) = take(claiming, ctx)
    assert again.invocation_id == retry.invocation_id
    assert claiming.claims == 2


class PausingProducer(AtomicClaimSQLiteOrchestrator):
    """Registers through the claim; when given a Pausing, it stops when it decides whether to
    queue or park a call, after reading the key's holder, inside its transaction.
    `at_park`: the BEGINs and COMMITs of its step so far, each time it parks a call."""

    pausing: Pausing | None = None

    def __init__(self, app: object) -> None:
        super().__init__(app)
        self.at_park: list[list[str]] = []

    def admits(self, *args: object) -> bool:
        if self.pausing:
            self.pausing.pause()
        return super().admits(*args)

    def _connect(self) -> sqlite3.Connection:
        conn = super()._connect()
        self.statements: list[str] = []
        conn.set_trace_callback(self.statements.append)
        return conn

    def _park(self, *args: object) -> None:
        self.at_park.append([s for s in self.statements if s.startswith(("BEGIN", "COMMIT"))])
        super()._park(*args)


class ObservedFinisher(AtomicClaimSQLiteOrchestrator):
    """Writes statuses through the claim; `blocked` is set when, about to take the write lock
    for one, it finds the lock held by someone else."""

    def __init__(self, app: object) -> None:
        super().__init__(app)
        self.blocked = threading.Event()

    def _begin(self, conn: object) -> None:
        if write_lock_held(self.sqlite_db_path):
            self.blocked.set()
        super()._begin(conn)


def test_a_call_parked_as_its_holder_finishes_takes_the_key_and_is_never_stranded(
    claim: Claim, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The producer reads "busy" and is held inside its transaction; the holder's final status
    must wait for the park, then hand the key to the parked call. Checked by mutation: with
    the producer's read and its park in two transactions, the holder ends first, frees the key
    with an empty line, and the call is parked behind nobody, never to run: this test fails.
    With the split just before or just after the decision instead, the pause falls inside one
    of the two transactions and the holder cannot end in between; the park is then seen in a
    second transaction, and this test fails too."""
    acct = unique()
    holder, _, holder_ctx = hold_the_key(claim, acct)
    producer = PausingProducer(claim.app)
    producer.pausing = Pausing()
    monkeypatch.setattr(claim.app, "_orchestrator", producer)
    made: dict[str, DistributedInvocation] = {}
    registering = threading.Thread(
        target=lambda: made.setdefault("late", claim.tasks.call_keyed(acct, "op1"))
    )
    finisher = ObservedFinisher(claim.app)
    finishing = threading.Thread(
        target=finisher.set_invocation_status, args=(holder.invocation_id, S.SUCCESS, holder_ctx)
    )
    registering.start()
    try:
        assert producer.pausing.checked.wait(WAIT), "the producer never read the holder"
        finishing.start()
        wait_until(
            lambda: finisher.blocked.is_set() or not finishing.is_alive(), WAIT, "the finisher"
        )
        assert finisher.blocked.is_set(), "the holder finished while the producer was held"
    finally:
        producer.pausing.let_go()
        registering.join(WAIT)
        finishing.join(WAIT)
    late = made["late"]
    assert producer.at_park == [["BEGIN IMMEDIATE"]], "the read and the park were split"
    assert claim.status(holder.invocation_id) == S.SUCCESS
    assert (claim.app.broker.count_invocations(), producer.waiting()) == (1, 0)
    claiming, ctx = claimer(claim.app, AtomicClaimer)
    assert [inv.invocation_id for inv in take(claiming, ctx)] == [late.invocation_id]


class PausedRelease(AtomicClaimSQLiteOrchestrator):
    """Stops as it hands a finished holder's key on, when given a Pausing."""

    pausing: Pausing | None = None

    def _release(self, *args: object) -> None:
        if self.pausing:
            self.pausing.pause()
        super()._release(*args)


def committed_status(app: Pynenc, db_path: str, invocation_id: str) -> str:
    """The status other connections see now: only what is committed."""
    table = app.orchestrator.tables.INVOCATIONS
    with closing(sqlite3.connect(db_path)) as conn:
        (status,) = conn.execute(
            f"SELECT status FROM {table} WHERE invocation_id = ?", (invocation_id,)
        ).fetchone()
    return status


def test_the_key_passes_on_in_the_same_step_as_the_holders_final_status(claim: Claim) -> None:
    """Nobody sees the holder ended and its line not yet moved on. Checked by mutation: with
    the hand-over in a transaction of its own, after the final status, the holder is seen
    SUCCESS while the next call is not yet queued, and this test fails."""
    acct = unique()
    holder, _, holder_ctx = hold_the_key(claim, acct)
    waiting = claim.tasks.call_keyed(acct, "op1")
    finisher = PausedRelease(claim.app)
    finisher.pausing = Pausing()
    finishing = threading.Thread(
        target=finisher.set_invocation_status, args=(holder.invocation_id, S.SUCCESS, holder_ctx)
    )
    finishing.start()
    try:
        assert finisher.pausing.checked.wait(WAIT), "the holder's end never handed the key on"
        seen = committed_status(claim.app, finisher.sqlite_db_path, holder.invocation_id)
        assert seen == "running"
        assert claim.app.broker.count_invocations() == 0
    finally:
        finisher.pausing.let_go()
        finishing.join(WAIT)
    assert claim.status(holder.invocation_id) == S.SUCCESS
    claiming, ctx = claimer(claim.app, AtomicClaimer)
    assert [inv.invocation_id for inv in take(claiming, ctx)] == [waiting.invocation_id]


def test_a_holder_taken_off_the_queue_by_a_worker_that_died_is_queued_again(claim: Claim) -> None:
    """A worker took the key's holder off the queue and died before claiming it: nothing but the
    sweep would ever claim it, and the calls behind it would wait forever. Checked by
    mutation: without the sweep's requeue, the queue stays empty and this test fails."""
    acct = unique()
    lost = claim.tasks.call_keyed(acct, "op0")
    behind = claim.tasks.call_keyed(acct, "op1")
    assert claim.app.broker.retrieve_invocation() == lost.invocation_id  # ...and it died
    sweeper, ctx = claimer(claim.app, AtomicClaimer)
    sweeper.heal_holders(ctx)
    assert claim.app.broker.count_invocations() == 0  # on its way to a claim, for all we know
    sweeper.heal_holders(ctx)
    (again,) = take(sweeper, ctx)  # seen off the queue twice: queued again
    assert again.invocation_id == lost.invocation_id
    sweeper.set_invocation_status(lost.invocation_id, S.RUNNING, ctx)
    sweeper.set_invocation_status(lost.invocation_id, S.SUCCESS, ctx)
    assert [inv.invocation_id for inv in take(sweeper, ctx)] == [behind.invocation_id]


@pytest.mark.parametrize("left_in", [S.KILLED, S.SUCCESS], ids=["killed", "ended"])
def test_a_holder_left_by_a_process_without_the_claim_or_a_dead_one_moves_on(
    claim: Claim, left_in: S
) -> None:
    """A holder KILLED by a runner that died before rerouting it (pynenc writes the two
    separately), or ended by a process without the claim (no hand-over): the sweep reroutes
    the first and hands the second's key on."""
    acct = unique()
    holder, _, holder_ctx = hold_the_key(claim, acct)
    behind = claim.tasks.call_keyed(acct, "op1")
    StockClaimer(claim.app).set_invocation_status(holder.invocation_id, left_in, holder_ctx)
    sweeper, ctx = claimer(claim.app, AtomicClaimer)
    sweeper.heal_holders(ctx)
    sweeper.heal_holders(ctx)  # a beat later: a KILLED one is stuck only when seen so twice
    (taken,) = take(sweeper, ctx)
    assert taken.invocation_id == (behind if left_in.is_final() else holder).invocation_id


SWEEP_ONCE = """
import sys, claimapp
from pynenc.runner.runner_context import RunnerContext
ctx = RunnerContext(runner_cls="ThreadRunner")
claimapp.app.orchestrator.recover_silent_runners(ctx)
print(claimapp.app.orchestrator.get_invocation_status(sys.argv[1]).value)
"""


def test_a_worker_that_has_run_nothing_yet_recovers_a_silent_runners_call(claim: Claim) -> None:
    """A fresh worker's first sweep, in a process of its own. pynenc builds its state backend
    on first use and, on 0.4.0, writes as it builds it: built inside the sweep's transaction,
    that write waited on the sweep's own write lock for SQLite's 30 s busy timeout, and the
    worker stood still meanwhile. Checked by mutation: without the warm-up in `_connect`, on
    pynenc 0.4.0 this process was still locked at its deadline."""
    acct = unique()
    holder, orchestrator, holder_ctx = hold_the_key(claim, acct)
    with closing(sqlite3.connect(orchestrator.sqlite_db_path)) as conn, conn:
        conn.execute(  # its runner's last beat an hour ago (the claim's clock): silent
            f"UPDATE {orchestrator.beats} SET at = at - 3600 WHERE runner_id = ?",
            (holder_ctx.runner_id,),
        )
    env = {**os.environ, **claim.environment()}
    argv = [sys.executable, "-c", SWEEP_ONCE, holder.invocation_id]
    swept = subprocess.run(argv, cwd=HERE, env=env, capture_output=True, text=True, timeout=20)
    assert swept.returncode == 0, swept.stderr
    assert swept.stdout.splitlines()[-1] == S.REROUTED.value, swept.stdout
    assert claim.app.broker.retrieve_invocation() == holder.invocation_id


def test_every_claim_carries_a_larger_token_for_its_key(claim: Claim) -> None:
    acct, other = unique(), unique()
    first, second = claim.tasks.call_keyed(acct, "op1"), claim.tasks.call_keyed(acct, "op2")
    elsewhere = claim.tasks.call_keyed_drop(other, "op1")
    orchestrator, ctx = claimer(claim.app, AtomicClaimer)
    taken = list(orchestrator.get_invocations_to_run(3, ctx))
    assert [i.invocation_id for i in taken] == [first.invocation_id, elsewhere.invocation_id]
    orchestrator.set_invocation_status(first.invocation_id, S.RUNNING, ctx)
    orchestrator.set_invocation_status(first.invocation_id, S.SUCCESS, ctx)
    (again,) = take(orchestrator, ctx)
    assert again.invocation_id == second.invocation_id
    assert again.fence_token > taken[0].fence_token and taken[1].fence_token is not None
    # The store keeps a claim's token only while its call is not final.
    assert orchestrator.fence_token(first.invocation_id) is None
    assert orchestrator.fence_token(second.invocation_id) == again.fence_token


def test_the_claim_refuses_an_untested_pynenc_wherever_it_is_built(
    claim: Claim, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(versions, "version", lambda name: "9.9.9")
    with pytest.raises(versions.UntestedVersion) as refused:
        AtomicClaimSQLiteOrchestrator(claim.app)  # as pynenc builds it, by class name
    message = str(refused.value)
    assert "\n" not in message
    assert "pynenc 0.3.1" in message and "pynenc 9.9.9" in message


def test_two_claimers_racing_for_a_keys_last_slot_let_exactly_one_in(claim: Claim) -> None:
    """A key of two slots (claimapp's call_two) with one holder already: two claimers race for
    its last slot. Checked by mutation: with the holders counted in one transaction and the
    slot taken in a second (`claim_in_store` committing after `_holders`, then a new BEGIN
    IMMEDIATE), claimer 1 read and wrote in two transactions (`check and write split`), room
    for claimer 2 to count the same free slot: this test failed."""
    acct = unique()
    with stock_registration(claim):
        calls = [claim.tasks.call_two(acct, f"op{n}") for n in range(3)]
    plain, ctx = claimer(claim.app, AtomicClaimer)
    (holder,) = take(plain, ctx)
    assert holder.invocation_id == calls[0].invocation_id
    got_one, got_two, _, _ = race(claim.app, AtomicClaimer)
    # Claimer 1 took the last slot; claimer 2 saw the key full and parked its call.
    assert len(got_one) == 1 and got_two == []
    assert claim.status(got_one[0].invocation_id) == S.PENDING
    (loser,) = [c for c in calls[1:] if c.invocation_id != got_one[0].invocation_id]
    assert claim.status(loser.invocation_id) == S.REGISTERED
    assert claim.app.orchestrator.waiting() == 1


class RateWatcher(AtomicClaimer):
    """The atomic claim, noting for each read of a key's rate window whether it ran inside the
    step's write transaction."""

    def __init__(self, app: object) -> None:
        super().__init__(app)
        self.rate_read_in_transaction: list[bool] = []

    def _rate_free_at(self, conn: sqlite3.Connection, *args: object) -> float | None:
        self.rate_read_in_transaction.append(conn.in_transaction)
        return super()._rate_free_at(conn, *args)


def test_two_claimers_racing_for_a_keys_last_call_of_its_rate_let_exactly_one_in(
    claim: Claim,
) -> None:
    """A key of two slots at one call per 4 s (claimapp's call_rated), its rate unspent: two
    claimers race for it. One call runs; the other takes the second slot and waits for the
    window, off the queue; each read of the window ran inside its step's BEGIN IMMEDIATE.
    Checked by mutation: with the window read before the step's BEGIN IMMEDIATE (on a
    connection of its own), two workers could both read it free and both admit a call; the
    race here serializes them at the queue first, so the read's place is what failed."""
    acct = unique()
    with stock_registration(claim):
        calls = [claim.tasks.call_rated(acct, f"op{n}") for n in range(2)]
    watchers: list[RateWatcher] = []

    class Watched(RateWatcher):
        def __init__(self, app: object) -> None:
            super().__init__(app)
            watchers.append(self)

    got_one, got_two, _, _ = race(claim.app, Watched)
    assert len(got_one) == 1 and got_two == []
    assert claim.status(got_one[0].invocation_id) == S.PENDING
    (waiter,) = [c for c in calls if c.invocation_id != got_one[0].invocation_id]
    assert claim.status(waiter.invocation_id) != S.PENDING
    reads = [read for watcher in watchers for read in watcher.rate_read_in_transaction]
    assert reads and all(reads), reads


def test_a_runner_taken_for_dead_that_runs_its_call_again_stores_only_the_later_outcome(
    claim: Claim,
) -> None:
    """A live runner taken for dead (a late beat) takes its own recovered invocation back, with
    a newer token, while its first attempt's call is still out; that attempt's outcome (fenced
    at the provider, so it raised) then comes back under the same runner. Only the attempt
    running now may end the invocation. Checked by mutation: with `_still_holds` comparing the
    runner alone, the cut attempt's failure was stored (FAILED), the applied attempt's success
    was refused, and this test failed."""
    acct = unique()
    call = claim.tasks.call_keyed(acct, "op0")
    orchestrator, ctx = claimer(claim.app, AtomicClaimer)
    (first,) = take(orchestrator, ctx)
    orchestrator.set_invocation_status(call.invocation_id, S.RUNNING, ctx)
    with closing(sqlite3.connect(orchestrator.sqlite_db_path)) as conn, conn:
        conn.execute(  # its runner's last beat an hour ago (the claim's clock): silent
            f"UPDATE {orchestrator.beats} SET at = at - 3600 WHERE runner_id = ?", (ctx.runner_id,)
        )
    bystander, bystander_ctx = claimer(claim.app, AtomicClaimer)
    bystander.recover_silent_runners(bystander_ctx)
    assert claim.status(call.invocation_id) == S.REROUTED
    (second,) = take(orchestrator, ctx)  # the same runner, live after all, takes it back
    assert second.invocation_id == call.invocation_id
    assert orchestrator.fence_token(call.invocation_id) > first.fence_token
    orchestrator.set_invocation_status(call.invocation_id, S.RUNNING, ctx)
    orchestrator.set_invocation_exception(first, RuntimeError("fenced by a newer claim"), ctx)
    assert claim.status(call.invocation_id) == S.RUNNING
    orchestrator.set_invocation_result(second, "ok", ctx)
    assert claim.status(call.invocation_id) == S.SUCCESS


def rated_and_set_back(
    claim: Claim,
) -> tuple[str, DistributedInvocation, AtomicClaimer, RunnerContext, str]:
    """A call of a rated key (claimapp's call_rated) claimed, not started, its admission then set
    back an hour (a claim long before the start): its key, the call, the claimer, its runner's
    context, and the query of the call's admission time."""
    acct = unique()
    call = claim.tasks.call_rated(acct, "op0")
    orchestrator, ctx = claimer(claim.app, AtomicClaimer)
    (taken,) = take(orchestrator, ctx)
    assert taken.invocation_id == call.invocation_id
    with closing(sqlite3.connect(orchestrator.sqlite_db_path)) as conn, conn:
        conn.execute(f"UPDATE {orchestrator.admitted} SET at = at - 3600")
    return (
        acct,
        call,
        orchestrator,
        ctx,
        f"SELECT at FROM {orchestrator.admitted} WHERE invocation_id = ?",
    )


def test_a_rated_call_counts_against_its_keys_rate_from_its_start_not_its_claim(
    claim: Claim,
) -> None:
    """A call of a rated key (claimapp's call_rated) is admitted as it is claimed; its RUNNING
    dates that admission again, in the same step, so the rate's grace covers only the way from
    the call's start to the provider, not a stall between claim and start. Here the admission
    is set back an hour after the claim (a claim long before the start): its RUNNING brings it
    to the host's clock. Checked by mutation: without the restamp in `set_invocation_status`,
    the admission stayed an hour back and this test failed."""
    _, call, orchestrator, ctx, admitted = rated_and_set_back(claim)
    with closing(sqlite3.connect(orchestrator.sqlite_db_path)) as conn:
        ((back,),) = conn.execute(admitted, (call.invocation_id,)).fetchall()
    before = host_clock()
    orchestrator.set_invocation_status(call.invocation_id, S.RUNNING, ctx)
    with closing(sqlite3.connect(orchestrator.sqlite_db_path)) as conn:
        ((at,),) = conn.execute(admitted, (call.invocation_id,)).fetchall()
    assert at >= before > back + 3000
    assert orchestrator._admitted == {}  # nothing kept once the call started


def test_a_rated_calls_admission_is_dated_after_its_running_write_ends(
    claim: Claim, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where pynenc's RUNNING is a write of its own, it may wait its turn for the write lock
    (42 ms at a load of 5, past the rate's grace, and G was throttled once): the admission is
    dated again once that write has ended, not only before it. Here pynenc's write notes the
    host's clock as it returns, and the admission is no older. Checked by mutation: without
    the restamp after the write, the admission was older and this test failed."""
    _, call, orchestrator, ctx, admitted = rated_and_set_back(claim)
    with closing(sqlite3.connect(orchestrator.sqlite_db_path)) as conn:
        ((back,),) = conn.execute(admitted, (call.invocation_id,)).fetchall()
    ended: list[float] = []
    write = SQLiteOrchestrator.set_invocation_status

    def noted(self: SQLiteOrchestrator, *args: object) -> None:
        write(self, *args)  # type: ignore[arg-type]
        # A write that took a while: it ends on a tick of the host's clock (10 ms on Linux)
        # later than any reading before it.
        began, deadline = host_clock(), time.monotonic() + 5
        while (now := host_clock()) == began and time.monotonic() < deadline:
            time.sleep(0.001)
        ended.append(now)

    monkeypatch.setattr(SQLiteOrchestrator, "set_invocation_status", noted)
    orchestrator.set_invocation_status(call.invocation_id, S.RUNNING, ctx)
    with closing(sqlite3.connect(orchestrator.sqlite_db_path)) as conn:
        ((at,),) = conn.execute(admitted, (call.invocation_id,)).fetchall()
    assert len(ended) == 1 and at >= ended[0] > back


def test_a_rated_calls_admission_is_dated_once_its_restamp_holds_the_write_lock(
    claim: Claim, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With pynenc's connections the restamp after the RUNNING is a step of its own, and it
    too may wait its turn for the write lock (another worker's step taking it as the RUNNING
    commits): the admission is dated once the restamp holds the lock, not before it waits.
    Here a step of another connection takes the lock as pynenc's write returns, and lets it
    go a tick of the host's clock after the restamp began to wait for it. Checked by mutation:
    with the restamp's time read before its BEGIN, the admission was older than the lock's
    release and this test failed."""
    if transaction.keeps_all(claim.app):
        pytest.skip("kept connections: the restamp is in the RUNNING's own transaction")
    _, call, orchestrator, ctx, admitted = rated_and_set_back(claim)
    write, released = SQLiteOrchestrator.set_invocation_status, []

    def then_taken(self: SQLiteOrchestrator, *args: object) -> None:
        write(self, *args)  # type: ignore[arg-type]
        other = sqlite3.connect(orchestrator.sqlite_db_path, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")

        def release() -> None:
            wait_until(transaction._looking.locked, WAIT, "the restamp waiting for the lock")
            began = host_clock()
            wait_until(lambda: host_clock() > began, WAIT, "a tick of the host's clock")
            released.append(host_clock())
            other.rollback()
            other.close()

        threading.Thread(target=release, daemon=True).start()

    monkeypatch.setattr(SQLiteOrchestrator, "set_invocation_status", then_taken)
    orchestrator.set_invocation_status(call.invocation_id, S.RUNNING, ctx)
    with closing(sqlite3.connect(orchestrator.sqlite_db_path)) as conn:
        ((at,),) = conn.execute(admitted, (call.invocation_id,)).fetchall()
    assert len(released) == 1 and at >= released[0]


def test_a_rated_call_claimed_longer_ago_than_its_window_still_counts_until_it_starts(
    claim: Claim,
) -> None:
    """A call claimed but not yet started (its worker stalled between claim and RUNNING: a
    SIGSTOP, a thread slow to start) reaches the provider only as it starts, so it counts in
    its key's rate (claimapp's call_rated: 1 per 4.05 s) as admitted now until then, however
    old its admission. Here that admission is set back an hour after the claim: a second call
    of the key is not taken. Then the admission is pruned (as an older one is by the next
    admission or the sweep) and the first call starts: its RUNNING adds it again, dated now.
    Checked by mutation, each failing this test: the unstarted holders left out of
    keyclaim.decision.rate_free_at (the second call was taken, to reach the provider beside
    the first: throttled); the restamp's INSERT left out (no admission after the first call's
    start)."""
    acct, first, orchestrator, ctx, admitted = rated_and_set_back(claim)
    claim.tasks.call_rated(acct, "op1")
    assert take(orchestrator, ctx) == []  # the first has not started: the rate is spent
    with closing(sqlite3.connect(orchestrator.sqlite_db_path)) as conn, conn:
        conn.execute(f"DELETE FROM {orchestrator.admitted}")
    before = host_clock()
    orchestrator.set_invocation_status(first.invocation_id, S.RUNNING, ctx)
    with closing(sqlite3.connect(orchestrator.sqlite_db_path)) as conn:
        ((at,),) = conn.execute(admitted, (first.invocation_id,)).fetchall()
    assert at >= before
