"""The multi-worker race, forced deterministically, and the atomic claim that closes it.

Two claimers stand for two runner processes: each has its own orchestrator instance and runner
context on the same SQLite file, and runs pynenc's real claiming loop (`get_invocations_to_run`)
in a thread of its own. Events decide the interleaving, so nothing depends on timing luck.
"""

import inspect
import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

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
from demo.stack import ROOT
from helpers import (
    WAIT,
    account,
    history,
    paused,
    status_of,
    unique,
    wait_final,
    wait_in_flight,
    write_lock_held,
)


class Pausing:
    """Stops a claimer at its first `stops` pause points, one after the other.

    At each, `reached[n]` is set, and it waits there until `go[n]` is set.
    """

    def __init__(self, stops: int = 1) -> None:
        self.reached = [threading.Event() for _ in range(stops)]
        self.go = [threading.Event() for _ in range(stops)]
        self.passed = 0

    @property
    def checked(self) -> threading.Event:
        return self.reached[0]

    def pause(self) -> None:
        if self.passed == len(self.go):
            return
        n, self.passed = self.passed, self.passed + 1
        self.reached[n].set()
        assert self.go[n].wait(WAIT), "the test never let the paused claimer go on"

    def let_go(self) -> None:
        for go in self.go:
            go.set()


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

    def claim_in_store(self, *args: object) -> atomic_claim.Decision:
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

    def decide(self, *args: object) -> atomic_claim.Decision:
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


@pytest.fixture(autouse=True)
def claim_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    """The claim refuses to be built without knowing how long a call may stay in flight."""
    monkeypatch.setitem(tasks.app.config_values, atomic_claim.LONGEST_CALL_KEY, 10.0)


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
    assert account(provider, acct) == {"calls": 2, "collisions": 1, "in_flight": 0, "fenced": 0}


@pytest.mark.parametrize(
    "task_name, loser_status",
    [("call_keyed", S.REGISTERED), ("call_keyed_drop", S.CONCURRENCY_CONTROLLED_FINAL)],
)
def test_atomic_claim_lets_exactly_one_worker_in(
    provider: Provider, monkeypatch: pytest.MonkeyPatch, task_name: str, loser_status: S
) -> None:
    """Checked by mutation: with the claim's read and its write split into two transactions
    (`claim_in_store` committing after the read, then writing in a second BEGIN IMMEDIATE),
    claimer 2 is not blocked and checks the key while claimer 1 is held; with the commit
    after the decision instead, claimer 1 holds no lock as it comes to write: either way this
    test fails."""
    task = getattr(tasks, task_name)
    acct = unique()
    # Registered the stock way, so both are on the queue for the two claimers to race for.
    first, second = task(acct, "fetch_profile"), task(acct, "list_invoices")

    got_one, got_two, ctx1, ctx2 = race(AtomicClaimer)

    # Claimer 1 checked first and holds the claim; claimer 2 saw it and lost: it waits in the
    # key's line (B) or is dropped (C).
    assert len(got_one) == 1 and got_two == []
    winner = got_one[0]
    loser = second if winner.invocation_id == first.invocation_id else first
    assert status_of(winner.invocation_id) == S.PENDING
    assert status_of(loser.invocation_id) == loser_status
    assert S.PENDING not in history(loser.invocation_id)

    monkeypatch.setattr(tasks.app, "_orchestrator", AtomicClaimSQLiteOrchestrator(tasks.app))
    winner.run(ctx1)
    if loser_status is S.REGISTERED:
        # Its turn came with the winner's end: handed the key and queued, never lost.
        third, ctx3 = claimer(AtomicClaimer)
        (again,) = take(third, ctx3)
        assert again.invocation_id == loser.invocation_id
        again.run(ctx3)
    expected = 2 if loser_status is S.REGISTERED else 1
    assert account(provider, acct) == {
        "calls": expected,
        "collisions": 0,
        "in_flight": 0,
        "fenced": 0,
    }


def test_a_rerouted_drop_crashes_stock_pynenc_and_waits_in_line_with_the_claim(
    provider: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pynenc forbids REROUTED -> CONCURRENCY_CONTROLLED_FINAL; stock raises in the runner loop.
    With the claim, the call waits in its key's line and runs once the key is free."""
    acct = unique()
    holder = tasks.call_keyed_drop(acct, "fetch_profile")
    rerouted = tasks.call_keyed_drop(acct, "list_invoices")
    stock, ctx = claimer(StockClaimer)
    # The holder is claimed; the other was claimed once, then sent back (as recovery does).
    assert holder.invocation_id in [inv.invocation_id for inv in take(stock, ctx)]
    stock.set_invocation_status(rerouted.invocation_id, S.PENDING, ctx)
    stock.reroute_invocations({rerouted.invocation_id}, ctx)
    assert status_of(rerouted.invocation_id) == S.REROUTED

    with pytest.raises(InvocationStatusTransitionError):
        take(stock, ctx)
    assert status_of(rerouted.invocation_id) == S.REROUTED
    # With the claim, from a clean queue: a new call holds the key, then the rerouted drop
    # comes back to the queue.
    stock.set_invocation_status(holder.invocation_id, S.RUNNING, ctx)
    stock.set_invocation_status(holder.invocation_id, S.SUCCESS, ctx)
    tasks.app.broker.purge()
    atomic, ctx2 = claimer(AtomicClaimer)
    monkeypatch.setattr(tasks.app, "_orchestrator", atomic)
    busy = tasks.call_keyed_drop(acct, "refresh_usage")
    assert [inv.invocation_id for inv in take(atomic, ctx2)] == [busy.invocation_id]
    atomic._route(rerouted.invocation_id)

    assert take(atomic, ctx2) == []
    assert status_of(rerouted.invocation_id) == S.REROUTED
    assert (tasks.app.broker.count_invocations(), atomic.waiting()) == (0, 1)  # in line, not lost
    atomic.set_invocation_status(busy.invocation_id, S.RUNNING, ctx2)
    atomic.set_invocation_status(busy.invocation_id, S.SUCCESS, ctx2)
    (again,) = take(atomic, ctx2)
    assert again.invocation_id == rerouted.invocation_id
    assert (tasks.app.broker.count_invocations(), atomic.waiting()) == (0, 0)


def hold_the_key(
    acct: str, task_name: str = "call_keyed"
) -> tuple[DistributedInvocation, AtomicClaimer, RunnerContext]:
    """An invocation of the task for acct, claimed and RUNNING under a live runner."""
    holder = getattr(tasks, task_name)(acct, "op0")
    orchestrator, ctx = claimer(AtomicClaimer)
    (claimed,) = take(orchestrator, ctx)
    assert claimed.invocation_id == holder.invocation_id
    orchestrator.set_invocation_status(holder.invocation_id, S.RUNNING, ctx)
    return holder, orchestrator, ctx


def test_a_blocking_invocation_whose_key_is_busy_waits_and_runs_later(claim_app: Provider) -> None:
    """An invocation others wait for is claimed through the blocking path too. Checked by
    mutation: when a busy key there wrote CONCURRENCY_CONTROLLED (the claim's first version),
    the invocation was no longer claimable once its turn came, and this test fails."""
    acct = unique()
    holder, orchestrator, holder_ctx = hold_the_key(acct)
    waited = tasks.call_keyed(acct, "op1")  # parked: the key is busy
    waiter = tasks.call_unsafe(unique(), "waits")
    orchestrator.waiting_for_results(waiter.invocation_id, [waited.invocation_id])
    tasks.app.broker.purge()  # the waiter's own entry: only the blocking path is left

    claiming, ctx = claimer(AtomicClaimer)
    assert take(claiming, ctx) == []
    assert status_of(waited.invocation_id) == S.REGISTERED  # as it was: still claimable

    orchestrator.set_invocation_status(holder.invocation_id, S.SUCCESS, holder_ctx)
    assert [inv.invocation_id for inv in take(claiming, ctx)] == [waited.invocation_id]
    assert status_of(waited.invocation_id) == S.PENDING


def test_a_retry_on_a_busy_key_waits_in_line_without_spinning(claim_app: Provider) -> None:
    """A RETRY may only become PENDING, so a busy key can neither reroute nor drop it: it waits
    in the key's line like any blocked call. Checked by mutation: a blocked call put back on
    the queue instead (the churn of stock rerouting) is handed straight back to the same
    claiming pass, which claims it again and again (the claimer's count trips)."""
    acct = unique()
    holder, orchestrator, holder_ctx = hold_the_key(acct, "call_keyed_drop")
    retry = tasks.call_keyed_drop(acct, "op1")
    first_try, try_ctx = claimer(AtomicClaimer)
    # As if it had been tried once under a worker that knew nothing of the key.
    StockClaimer(tasks.app).set_invocation_status(retry.invocation_id, S.PENDING, try_ctx)
    StockClaimer(tasks.app).set_invocation_status(retry.invocation_id, S.RUNNING, try_ctx)
    tasks.app.broker.purge()
    # pynenc 0.3.1 takes the invocation's id here, 0.4.0 the invocation.
    takes = list(inspect.signature(SQLiteOrchestrator.set_invocation_retry).parameters)[1]
    retrying = retry if takes == "invocation" else retry.invocation_id
    first_try.set_invocation_retry(retrying, RuntimeError("429"), try_ctx)
    assert status_of(retry.invocation_id) == S.RETRY

    claiming, ctx = claimer(AtomicClaimer)
    claiming.most_claims = 5
    assert take(claiming, ctx) == []
    assert claiming.claims == 1
    assert (tasks.app.broker.count_invocations(), claiming.waiting()) == (0, 1)

    orchestrator.set_invocation_status(holder.invocation_id, S.SUCCESS, holder_ctx)
    (again,) = take(claiming, ctx)
    assert again.invocation_id == retry.invocation_id
    assert claiming.claims == 2


class PausingProducer(AtomicClaimSQLiteOrchestrator):
    """Registers through the claim; when given a Pausing, it stops when it decides whether to
    queue or park a call, after reading the key's holder, inside its transaction."""

    pausing: Pausing | None = None

    def admits(self, *args: object) -> bool:
        if self.pausing:
            self.pausing.pause()
        return super().admits(*args)


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
    claim_app: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The producer reads "busy" and is held inside its transaction; the holder's final status
    must wait for the park, then hand the key to the parked call. Checked by mutation: with
    the producer's read and its park in two transactions, the holder ends first, frees the key
    with an empty line, and the call is parked behind nobody, never to run: this test fails."""
    acct = unique()
    holder, _, holder_ctx = hold_the_key(acct)
    producer = PausingProducer(tasks.app)
    producer.pausing = Pausing()
    monkeypatch.setattr(tasks.app, "_orchestrator", producer)
    made: dict[str, DistributedInvocation] = {}
    registering = threading.Thread(
        target=lambda: made.setdefault("late", tasks.call_keyed(acct, "op1"))
    )
    finisher = ObservedFinisher(tasks.app)
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
    assert status_of(holder.invocation_id) == S.SUCCESS
    assert (tasks.app.broker.count_invocations(), producer.waiting()) == (1, 0)
    claiming, ctx = claimer(AtomicClaimer)
    assert [inv.invocation_id for inv in take(claiming, ctx)] == [late.invocation_id]


class PausedRelease(AtomicClaimSQLiteOrchestrator):
    """Stops as it hands a finished holder's key on, when given a Pausing."""

    pausing: Pausing | None = None

    def _release(self, *args: object) -> None:
        if self.pausing:
            self.pausing.pause()
        super()._release(*args)


def committed_status(db_path: str, invocation_id: str) -> str:
    """The status other connections see now: only what is committed."""
    table = tasks.app.orchestrator.tables.INVOCATIONS
    with closing(sqlite3.connect(db_path)) as conn:
        (status,) = conn.execute(
            f"SELECT status FROM {table} WHERE invocation_id = ?", (invocation_id,)
        ).fetchone()
    return status


def test_the_key_passes_on_in_the_same_step_as_the_holders_final_status(
    claim_app: Provider,
) -> None:
    """Nobody sees the holder ended and its line not yet moved on. Checked by mutation: with
    the hand-over in a transaction of its own, after the final status, the holder is seen
    SUCCESS while the next call is not yet queued, and this test fails."""
    acct = unique()
    holder, _, holder_ctx = hold_the_key(acct)
    waiting = tasks.call_keyed(acct, "op1")
    finisher = PausedRelease(tasks.app)
    finisher.pausing = Pausing()
    finishing = threading.Thread(
        target=finisher.set_invocation_status, args=(holder.invocation_id, S.SUCCESS, holder_ctx)
    )
    finishing.start()
    try:
        assert finisher.pausing.checked.wait(WAIT), "the holder's end never handed the key on"
        assert committed_status(finisher.sqlite_db_path, holder.invocation_id) == "running"
        assert tasks.app.broker.count_invocations() == 0
    finally:
        finisher.pausing.let_go()
        finishing.join(WAIT)
    assert status_of(holder.invocation_id) == S.SUCCESS
    claiming, ctx = claimer(AtomicClaimer)
    assert [inv.invocation_id for inv in take(claiming, ctx)] == [waiting.invocation_id]


def test_a_holder_taken_off_the_queue_by_a_worker_that_died_is_queued_again(
    claim_app: Provider,
) -> None:
    """A worker took the key's holder off the queue and died before claiming it: nothing but the
    sweep would ever claim it, and the calls behind it would wait forever. Checked by
    mutation: without the sweep's requeue, the queue stays empty and this test fails."""
    acct = unique()
    lost = tasks.call_keyed(acct, "op0")
    behind = tasks.call_keyed(acct, "op1")
    assert tasks.app.broker.retrieve_invocation() == lost.invocation_id  # ...and it died
    sweeper, ctx = claimer(AtomicClaimer)
    sweeper.heal_holders(ctx)
    assert tasks.app.broker.count_invocations() == 0  # on its way to a claim, for all we know
    sweeper.heal_holders(ctx)
    (again,) = take(sweeper, ctx)  # seen off the queue twice: queued again
    assert again.invocation_id == lost.invocation_id
    sweeper.set_invocation_status(lost.invocation_id, S.RUNNING, ctx)
    sweeper.set_invocation_status(lost.invocation_id, S.SUCCESS, ctx)
    assert [inv.invocation_id for inv in take(sweeper, ctx)] == [behind.invocation_id]


@pytest.mark.parametrize("left_in", [S.KILLED, S.SUCCESS], ids=["killed", "ended"])
def test_a_holder_left_by_a_process_without_the_claim_or_a_dead_one_moves_on(
    claim_app: Provider, left_in: S
) -> None:
    """A holder KILLED by a runner that died before rerouting it (pynenc writes the two
    separately), or ended by a process without the claim (no hand-over): the sweep reroutes
    the first and hands the second's key on."""
    acct = unique()
    holder, _, holder_ctx = hold_the_key(acct)
    behind = tasks.call_keyed(acct, "op1")
    StockClaimer(tasks.app).set_invocation_status(holder.invocation_id, left_in, holder_ctx)
    sweeper, ctx = claimer(AtomicClaimer)
    sweeper.heal_holders(ctx)
    sweeper.heal_holders(ctx)  # a beat later: a KILLED one is stuck only when seen so twice
    (taken,) = take(sweeper, ctx)
    assert taken.invocation_id == (behind if left_in.is_final() else holder).invocation_id


SWEEP_ONCE = """
import sys, tasks
from pynenc.runner.runner_context import RunnerContext
ctx = RunnerContext(runner_cls="ThreadRunner")
tasks.app.orchestrator.recover_silent_runners(ctx)
print(tasks.app.orchestrator.get_invocation_status(sys.argv[1]).value)
"""


def test_a_worker_that_has_run_nothing_yet_recovers_a_silent_runners_call(
    claim_app: Provider,
) -> None:
    """A fresh worker's first sweep, in a process of its own. pynenc builds its state backend
    on first use and, on 0.4.0, writes as it builds it: built inside the sweep's transaction,
    that write waited on the sweep's own write lock for SQLite's 30 s busy timeout, and the
    worker stood still meanwhile. Checked by mutation: without the warm-up in `_connect`, on
    pynenc 0.4.0 this process was still locked at its deadline."""
    acct = unique()
    holder, orchestrator, holder_ctx = hold_the_key(acct)
    with closing(sqlite3.connect(orchestrator.sqlite_db_path)) as conn, conn:
        conn.execute(  # its runner's last beat an hour ago (the claim's clock): silent
            f"UPDATE {orchestrator.beats} SET at = at - 3600 WHERE runner_id = ?",
            (holder_ctx.runner_id,),
        )
    env = {**os.environ, "DEMO_ATOMIC_CLAIM": "1"}
    argv = [sys.executable, "-c", SWEEP_ONCE, holder.invocation_id]
    swept = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=20)
    assert swept.returncode == 0, swept.stderr
    assert swept.stdout.splitlines()[-1] == S.REROUTED.value, swept.stdout
    assert tasks.app.broker.retrieve_invocation() == holder.invocation_id


def test_every_claim_carries_a_larger_token_for_its_key(claim_app: Provider) -> None:
    acct, other = unique(), unique()
    first, second = tasks.call_keyed(acct, "op1"), tasks.call_keyed(acct, "op2")
    elsewhere = tasks.call_keyed_drop(other, "op1")
    orchestrator, ctx = claimer(AtomicClaimer)
    taken = [inv.invocation_id for inv in orchestrator.get_invocations_to_run(3, ctx)]
    assert taken == [first.invocation_id, elsewhere.invocation_id]
    orchestrator.set_invocation_status(first.invocation_id, S.RUNNING, ctx)
    orchestrator.set_invocation_status(first.invocation_id, S.SUCCESS, ctx)
    (again,) = take(orchestrator, ctx)
    assert again.invocation_id == second.invocation_id
    tokens = [orchestrator.fence_token(i.invocation_id) for i in (first, second, elsewhere)]
    assert tokens[1] > tokens[0] and tokens[2] is not None


def test_the_claim_refuses_an_untested_pynenc_wherever_it_is_built(
    provider: Provider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pynenc_versions, "version", lambda name: "9.9.9")
    with pytest.raises(pynenc_versions.UntestedVersion) as refused:
        AtomicClaimSQLiteOrchestrator(tasks.app)  # as pynenc builds it, by class name
    message = str(refused.value)
    assert "\n" not in message
    assert "pynenc 0.3.1" in message and "pynenc 9.9.9" in message


REFUSALS = {
    "a heartbeat too slow for the window": {
        "DEMO_DEAD_AFTER": "3",
        "DEMO_CALL_TIMEOUT": "2",
        "PYNENC__ATOMIC_SERVICE_CHECK_INTERVAL_MINUTES": "0.5",
    },
    "a window shorter than a call": {"DEMO_DEAD_AFTER": "5", "DEMO_CALL_TIMEOUT": "10"},
    "another orchestrator resolved": {"PYNENC__ORCHESTRATOR_CLS": "SQLiteOrchestrator"},
}


def test_a_worker_refuses_a_claim_its_configuration_would_make_lie(tmp_path: Path) -> None:
    """What pynenc resolves counts (its environment variables rank above the builder). The
    workers start side by side, one per override."""
    argv = [sys.executable, "-m", "pynenc", "--app", "tasks.app", "runner", "start"]
    started = {}
    for n, (case, override) in enumerate(REFUSALS.items()):
        env = {**os.environ, "DEMO_ATOMIC_CLAIM": "1", "DEMO_DB": str(tmp_path / f"{n}.db")}
        started[case] = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**env, **override},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    try:
        ended = {case: (w, *w.communicate(timeout=60)) for case, w in started.items()}
    finally:
        for worker in started.values():  # one that did not refuse runs on: stopped here
            if worker.poll() is None:
                worker.kill()
                worker.wait(60)
    for case, (worker, out, err) in ended.items():
        assert worker.returncode == 2, f"{case}: {out}{err}"
        assert len(err.strip().splitlines()) == 1, f"{case}: {err}"
        assert err.startswith("tasks.py: "), f"{case}: {err}"
        assert "Traceback" not in err and "Starting runner" not in out, case


@pytest.mark.e2e
def test_on_redis_the_same_race_lets_exactly_one_worker_in(redis_url: str) -> None:
    """tests/redis_claim_race.py forces the same interleaving on Redis, where a claimer is not
    blocked but its EXEC fails and it tries again on fresh data. Checked by mutation: with only
    the invocation's own status watched (the key's holder and token counter left out of WATCH),
    claimer 1's EXEC went through and both claimers were granted; with the holder's key and
    status left out of the producer's WATCH, its call was parked in a line with no holder,
    never to run; without the pause between tries, `pauses` is empty."""
    env = {
        **os.environ,
        "DEMO_BACKEND": "redis",
        "REDIS_URL": redis_url,
        "DEMO_ATOMIC_CLAIM": "1",
        "PYTHONPATH": str(ROOT),  # the script lives in tests/; tasks.py and demo/ at the top
    }
    argv = ["uv", "run", "--isolated", "--group", "redis", "python", "tests/redis_claim_race.py"]
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])

    race = found["race"]
    first, second = race["ids"]
    assert (race["one"], race["two"]) == ([], [second])
    assert race["statuses"] == ["registered", "pending"]  # the loser waits in the key's line
    assert race["tries_one"] == 2  # its first EXEC failed: claimer 2's claim changed a watched key

    # A producer parks while the holder finishes: its EXEC fails, it reads again, and its call
    # takes the freed key instead of waiting in a line nobody will hand on.
    park = found["park"]
    assert park["producer_reads"] == 2
    assert (park["status"], park["queued"], park["waiting"], park["taken"]) == (
        "registered",
        1,
        0,
        True,
    )

    # A claim whose watched keys change on every try gives up, and its invocation is not lost;
    # between tries it pauses, longer each time (up to a bound), with some jitter.
    stuck = found["contention"]
    assert (stuck["taken"], stuck["tries"], stuck["status"]) == ([], 5, "registered")
    assert stuck["queued"] == 1
    assert stuck["counts"] == {"claims": 1, "retries": 5}
    first, longest = atomic_claim.BACKOFF_SECONDS
    bounds = [min(longest, first * 2**n) for n in range(5)]
    assert all(b / 2 <= p <= b for p, b in zip(stuck["pauses"], bounds, strict=True))

    # A holder ended without a hand-over is let go by the next registration for its key; one a
    # dead worker took off the queue is queued again by the sweep, on its second sighting.
    assert found["healing"] == {
        "after_ended_taken": True,
        "queued_after_one_sweep": 0,
        "lost_taken": True,
    }
