"""The multi-worker race, forced deterministically, and the atomic claim that closes it.

Two claimers stand for two runner processes: each has its own orchestrator instance and runner
context on the same SQLite file, and runs pynenc's real claiming loop (`get_invocations_to_run`)
in a thread of its own. Events decide the interleaving, so nothing depends on timing luck.
"""

import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pynenc.exceptions import InvocationStatusTransitionError
from pynenc.invocation.dist_invocation import DistributedInvocation
from pynenc.invocation.status import InvocationStatus as S
from pynenc.orchestrator.sqlite_orchestrator import SQLiteOrchestrator
from pynenc.runner.runner_context import RunnerContext
from test_semantics import WAIT, account, history, paused, wait_final, wait_in_flight

import tasks
from conftest import ROOT, unique
from demo import atomic_claim, pynenc_versions
from demo.atomic_claim import AtomicClaimSQLiteOrchestrator
from demo.processes import wait_until
from demo.scenarios import Provider, status_of


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
    """The atomic claim, observed.

    With a Pausing it stops in `decide`, after reading the key, inside its transaction.
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

    def decide(self, *args: object) -> atomic_claim.Decision:
        self.reached.set()
        if self.pausing:
            self.pausing.pause()
        return super().decide(*args)

    def _retriever(self, *hooks: object) -> Callable[[], object]:
        retrieve = super()._retriever(*hooks)

        def observed() -> object:
            probe = sqlite3.connect(self.sqlite_db_path, timeout=0)
            try:
                probe.execute("BEGIN IMMEDIATE")
                probe.rollback()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc):
                    raise
                self.blocked.set()
            finally:
                probe.close()
            return retrieve()

        return observed


class BothChecked(SQLiteOrchestrator):
    """Stock run-time check (DistributedInvocation.run), both workers past it before either runs."""

    barrier: threading.Barrier

    def is_authorize_to_run_by_concurrency_control(self, invocation: object) -> bool:
        free = super().is_authorize_to_run_by_concurrency_control(invocation)
        self.barrier.wait()
        return free


@pytest.fixture
def provider(live_api: Provider, monkeypatch: pytest.MonkeyPatch) -> Iterator[Provider]:
    live_api.reset("claim test", hold=0.0)
    # No worker runs in these tests: an empty queue means the claimers see only our invocations.
    tasks.app.broker.purge()
    # The claim refuses to be built without knowing how long a call may stay in flight.
    monkeypatch.setitem(tasks.app.config_values, atomic_claim.LONGEST_CALL_KEY, 10.0)
    yield live_api
    live_api.http.post("/resume")


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
            # Claimer 1 holds the write lock from its read to its write: claimer 2, about to
            # take an invocation off the queue, finds it held, and has not looked at the key.
            wait_until(lambda: two.blocked.is_set() or two.reached.is_set(), WAIT, "claimer 2")
            assert two.blocked.is_set(), "claimer 2 was not blocked while claimer 1 was held"
            assert not two.reached.is_set(), "claimer 2 checked the key while claimer 1 was held"
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
    assert account(provider, acct) == {"calls": 2, "collisions": 1, "in_flight": 0, "fenced": 0}


@pytest.mark.parametrize(
    "task_name, loser_status",
    [("call_keyed", S.REROUTED), ("call_keyed_drop", S.CONCURRENCY_CONTROLLED_FINAL)],
)
def test_atomic_claim_lets_exactly_one_worker_in(
    provider: Provider, task_name: str, loser_status: S
) -> None:
    """Checked by mutation: with the claim's read and its write split into two transactions
    (`claim_in_store` committing after the read, then writing in a second BEGIN IMMEDIATE),
    claimer 2 is not blocked and checks the key while claimer 1 is held: this test fails."""
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
    assert account(provider, acct) == {
        "calls": expected,
        "collisions": 0,
        "in_flight": 0,
        "fenced": 0,
    }


def test_a_rerouted_drop_crashes_stock_pynenc_and_is_queued_again_by_the_claim(
    provider: Provider,
) -> None:
    """pynenc forbids REROUTED -> CONCURRENCY_CONTROLLED_FINAL; stock raises in the runner loop."""
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
    atomic, ctx2 = claimer(AtomicClaimer)
    atomic._route(rerouted.invocation_id)  # the crash took it off the queue: put it back

    assert take(atomic, ctx2) == []
    assert status_of(rerouted.invocation_id) == S.REROUTED
    assert history(rerouted.invocation_id)[-2:] == [S.CONCURRENCY_CONTROLLED, S.REROUTED]
    assert tasks.app.broker.count_invocations() == 1  # back on the queue, not lost


def hold_the_key(acct: str) -> tuple[DistributedInvocation, AtomicClaimer, RunnerContext]:
    """A call_keyed invocation for acct, claimed and RUNNING under a live runner."""
    holder = tasks.call_keyed(acct, "op0")
    orchestrator, ctx = claimer(AtomicClaimer)
    (claimed,) = take(orchestrator, ctx)
    assert claimed.invocation_id == holder.invocation_id
    orchestrator.set_invocation_status(holder.invocation_id, S.RUNNING, ctx)
    return holder, orchestrator, ctx


def test_a_blocking_invocation_whose_key_is_busy_stays_queued_and_runs_later(
    provider: Provider,
) -> None:
    """An invocation others wait for is claimed through the blocking path. Checked by
    mutation: when the busy verdict there wrote CONCURRENCY_CONTROLLED (the earlier claim), the
    invocation was stranded, never on the queue again, and this test fails."""
    acct = unique()
    holder, orchestrator, holder_ctx = hold_the_key(acct)
    waited = tasks.call_keyed(acct, "op1")
    waiter = tasks.call_unsafe(unique(), "waits")
    orchestrator.waiting_for_results(waiter.invocation_id, [waited.invocation_id])
    tasks.app.broker.purge()  # only the blocking path sees them now

    claiming, ctx = claimer(AtomicClaimer)
    assert take(claiming, ctx) == []
    assert status_of(waited.invocation_id) == S.REGISTERED  # as it was: still claimable

    orchestrator.set_invocation_status(holder.invocation_id, S.SUCCESS, holder_ctx)
    assert [inv.invocation_id for inv in take(claiming, ctx)] == [waited.invocation_id]
    assert status_of(waited.invocation_id) == S.PENDING


def test_a_retry_on_a_busy_key_waits_without_spinning_and_runs_once_free(
    provider: Provider,
) -> None:
    """RETRY may only become PENDING, so a busy key puts it back on the queue. Checked by
    mutation: putting it back at once, inside the pass, hands it straight back to the same
    loop, which claims it again and again (the claimer's count trips) instead of once."""
    acct = unique()
    holder, orchestrator, holder_ctx = hold_the_key(acct)
    retry = tasks.call_keyed(acct, "op1")
    first_try, try_ctx = claimer(AtomicClaimer)
    tasks.app.orchestrator.set_invocation_status(retry.invocation_id, S.PENDING, try_ctx)
    tasks.app.orchestrator.set_invocation_status(retry.invocation_id, S.RUNNING, try_ctx)
    tasks.app.broker.purge()  # the invocation's first entry was consumed by its first try
    first_try.set_invocation_retry(retry.invocation_id, RuntimeError("429"), try_ctx)
    assert status_of(retry.invocation_id) == S.RETRY

    claiming, ctx = claimer(AtomicClaimer)
    claiming.most_claims = 5
    assert take(claiming, ctx) == []
    assert claiming.claims == 1
    assert tasks.app.broker.count_invocations() == 1  # waiting on the queue, not lost

    orchestrator.set_invocation_status(holder.invocation_id, S.SUCCESS, holder_ctx)
    (again,) = take(claiming, ctx)
    assert again.invocation_id == retry.invocation_id
    assert claiming.claims == 2


def test_every_claim_carries_a_larger_token_for_its_key(provider: Provider) -> None:
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


@pytest.mark.parametrize("override", REFUSALS.values(), ids=REFUSALS.keys())
def test_a_worker_refuses_a_claim_its_configuration_would_make_lie(
    tmp_path: Path, override: dict[str, str]
) -> None:
    """What pynenc resolves counts (its environment variables rank above the builder)."""
    env = {**os.environ, "DEMO_ATOMIC_CLAIM": "1", "DEMO_DB": str(tmp_path / "w.db"), **override}
    argv = [sys.executable, "-m", "pynenc", "--app", "tasks.app", "runner", "start"]
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("tasks.py: "), result.stderr
    assert "Traceback" not in result.stderr and "Starting runner" not in result.stdout


@pytest.mark.e2e
def test_on_redis_the_same_race_lets_exactly_one_worker_in(redis_url: str) -> None:
    """tests/redis_claim_race.py forces the same interleaving on Redis, where a claimer is not
    blocked but its EXEC fails and it tries again on fresh data. Checked by mutation: with only
    the invocation's own status watched (the PENDING/RUNNING sets and the key's token counter
    left out of WATCH), claimer 1's EXEC went through and both claimers were granted."""
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
    assert race["statuses"] == ["rerouted", "pending"]
    assert race["tries_one"] == 2  # its first EXEC failed: claimer 2's claim changed a watched key

    # A claim whose watched keys change on every try gives up, and its invocation is not lost.
    stuck = found["contention"]
    assert (stuck["taken"], stuck["tries"], stuck["status"]) == ([], 5, "registered")
    assert stuck["queued"] == 1
    assert stuck["counts"] == {"claims": 1, "retries": 5}
