"""Kept SQLite connections, and the trigger that skips lookups no task needs.

Each connection is opened once, used by one block at a time, never across a fork; no trigger
lookups while no task is a trigger's source, and a real worker still fires an app's trigger."""

import inspect
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from contextlib import closing, nullcontext
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import claimapp
import pytest
from claimkit import HERE, WAIT, wait_until
from pynenc import Pynenc, PynencBuilder
from pynenc.broker.sqlite_broker import SQLiteBroker
from pynenc.invocation.status import InvocationStatus as S
from pynenc.orchestrator.sqlite_orchestrator import SQLiteOrchestrator
from pynenc.runner.runner_context import RunnerContext
from pynenc.state_backend.sqlite_state_backend import SQLiteStateBackend
from pynenc.trigger.sqlite_trigger import SQLiteTrigger
from pynenc.util.sqlite_utils import SQLiteConnection

import keyclaim
from keyclaim import connections, transaction
from keyclaim.connections import POOL, kept_connection
from keyclaim.decision import Verdict
from keyclaim.quiet import QuietSQLiteTrigger
from keyclaim.sqlite_claim import AtomicClaimSQLiteOrchestrator

time_sleep = time.sleep  # the real one, for the test that counts transaction's pauses

KEPT = (
    connections.KeptSQLiteOrchestrator,
    connections.KeptSQLiteBroker,
    connections.KeptSQLiteStateBackend,
    QuietSQLiteTrigger,
    AtomicClaimSQLiteOrchestrator,
)


class CountingTrigger(QuietSQLiteTrigger):
    """The quiet trigger, counting the lookups it lets through to pynenc's."""

    lookups = 0

    def get_conditions_sourced_from_task(self, task_id, context_type=None):  # type: ignore[no-untyped-def]
        CountingTrigger.lookups += 1
        return super().get_conditions_sourced_from_task(task_id, context_type)


class CountingStockTrigger(SQLiteTrigger):
    """pynenc's own trigger, counted the same way."""

    lookups = 0

    def get_conditions_sourced_from_task(self, task_id, context_type=None):  # type: ignore[no-untyped-def]
        CountingStockTrigger.lookups += 1
        return super().get_conditions_sourced_from_task(task_id, context_type)


def add(n: int) -> int:
    """A task's function, made a task of each test's own app (pynenc wants module level)."""
    return n


def build(db: Path, trigger: str | None = None):  # type: ignore[no-untyped-def]
    builder = PynencBuilder().app_id(f"kept_{uuid.uuid4().hex[:8]}").sqlite(str(db))
    builder = keyclaim.keep_connections(builder.thread_runner(max_threads=2))
    return builder.custom_config(trigger_cls=trigger).build() if trigger else builder.build()


def write_table(path: Path) -> None:
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER)")


def rows(path: Path) -> int:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT count(*) FROM t").fetchone()[0]


def test_every_method_that_opens_a_connection_takes_a_kept_one(tmp_path: Path) -> None:
    """Every method the kept classes inherit from pynenc's SQLite modules that opens a
    connection (directly, or through a module function or a helper class that does, such as
    the orchestrator's blocking control) opens it from the pool; pynenc's own classes are what
    this check finds, so it can fail. Checked by mutation: with the helper classes left as
    pynenc's, the blocking control opened its own and this failed."""
    app = build(tmp_path / "classes.db")
    parts = (app.orchestrator, app.orchestrator.blocking_control, app.broker, app.state_backend)
    for cls in (*KEPT, *(type(part) for part in parts)):
        assert connections.opens_own_connections(cls) == [], cls.__name__
    for cls in (SQLiteOrchestrator, SQLiteBroker, SQLiteStateBackend, SQLiteTrigger):
        assert len(connections.opens_own_connections(cls)) >= 3, cls.__name__


def test_an_app_opens_each_connection_once_and_sets_the_journal_once(tmp_path: Path) -> None:
    """Thirty invocations registered, routed and read back in one thread: hundreds of blocks
    on a handful of connections, and the journal mode set once for the file. Checked by
    mutation: with give() closing each connection instead of keeping it, every block opened
    its own and this failed."""
    app = build(tmp_path / "kept.db")
    opened, taken, journal = POOL.opened, POOL.taken, POOL.journal_set
    task = app.task(add)
    ids = [task(n).invocation_id for n in range(30)]
    assert {app.orchestrator.get_invocation_status(i) for i in ids} <= {S.REGISTERED, S.PENDING}
    assert POOL.taken - taken >= 90
    assert POOL.opened - opened <= 3
    assert POOL.journal_set - journal == 1


def test_two_apps_in_one_process_each_keep_their_own_choice(tmp_path: Path) -> None:
    """An app with the claim and pynenc's connections, built beside one that keeps them, does
    not switch the other's off (nor the other way round): the choice is per file. Checked by
    mutation: with one process-wide switch, as it was (the app built last sets it), the kept
    app's blocks opened a connection each and this failed; so did this file's other tests
    when a claim app's ran before them."""
    kept = build(tmp_path / "kept.db")
    claim = keyclaim.install(
        PynencBuilder().app_id(f"plain_{uuid.uuid4().hex[:8]}").sqlite(str(tmp_path / "p.db")),
        dead_after=15.0,
        longest_call=10.0,
        runner=None,
    ).build()
    _ = kept.orchestrator, claim.orchestrator  # built, the claim app's last
    kept.task(add)(1)
    with kept_connection(tmp_path / "kept.db") as conn:
        assert conn.file is not None  # kept: from the pool, given back as the block ends
    with kept_connection(tmp_path / "p.db") as conn:
        assert conn.file is None  # the claim app's file: opened for the block, pynenc's way


def test_a_block_commits_as_it_ends_and_rolls_back_on_an_error(tmp_path: Path) -> None:
    path = tmp_path / "blocks.db"
    write_table(path)
    with kept_connection(path) as conn:
        conn.execute("INSERT INTO t VALUES (1)")
    assert rows(path) == 1  # seen from another connection: committed
    with pytest.raises(RuntimeError), kept_connection(path) as conn:
        conn.execute("INSERT INTO t VALUES (2)")
        raise RuntimeError("the block fails")
    assert rows(path) == 1
    with kept_connection(path) as again:
        assert again is conn  # given back, with no transaction left open
        assert not again.in_transaction


def test_a_block_inside_another_gets_its_own_connection(tmp_path: Path) -> None:
    """The inner block's end commits nothing of the outer block's transaction. Checked by
    mutation: handing the inner block the connection in use made its end commit the outer
    block's row, and this failed."""
    path = tmp_path / "nested.db"
    write_table(path)
    with kept_connection(path):
        pass  # one free connection in the pool
    with pytest.raises(RuntimeError), kept_connection(path) as outer:
        outer.execute("INSERT INTO t VALUES (1)")
        with kept_connection(path) as inner:
            assert inner is not outer
            inner.execute("SELECT count(*) FROM t").fetchone()
        assert outer.in_transaction
        raise RuntimeError("the outer block fails")
    assert rows(path) == 0


def test_a_database_file_replaced_under_its_path_gets_new_connections(tmp_path: Path) -> None:
    """A fresh database at the same path (sample.py starts each run from one): the pool's
    connections to the old file are dropped, the new file's journal is set, and writes land
    in the new file, not in the unlinked one."""
    path = tmp_path / "replaced.db"
    write_table(path)
    with kept_connection(path) as first:
        first.execute("INSERT INTO t VALUES (1)")
    for leftover in path.parent.glob("replaced.db*"):
        leftover.unlink()
    write_table(path)
    journal = POOL.journal_set
    with kept_connection(path) as second:
        assert second is not first
        second.execute("INSERT INTO t VALUES (2)")
    assert POOL.journal_set - journal == 1
    assert rows(path) == 1


def test_a_fresh_file_on_a_reused_inode_gets_its_journal_mode(tmp_path: Path) -> None:
    """After close() (a runner's stop), the database is deleted and made again at its path, as
    each demo run does: the new file often takes the old one's inode, and still gets WAL from
    the first connection that opens it. Checked by mutation: with the pool remembering every
    file it had set the mode of by device and inode, the new file stayed in rollback-journal
    mode ("delete") and this failed."""
    path, reused, before = tmp_path / "reused.db", 0, None
    for _ in range(5):
        with kept_connection(path) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER)")
        inode = path.stat().st_ino
        reused += inode == before
        with closing(sqlite3.connect(path)) as other:
            assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        connections.close()
        for leftover in tmp_path.glob("reused.db*"):
            leftover.unlink()
        before = inode
    if not reused:
        pytest.skip("this file system gave the path a new inode each time")


def _blobs(path: Path, commits: int, rows_each: int) -> None:
    """commits of rows_each 4,000-byte rows, about a page each, through kept connections."""
    for _ in range(commits):
        with kept_connection(path) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS b (x BLOB)")
            conn.executemany("INSERT INTO b VALUES (?)", [(os.urandom(4000),)] * rows_each)


def test_commits_past_sqlites_1000_pages_of_wal_leave_their_checkpoint_for_later(
    tmp_path: Path,
) -> None:
    """About 1,500 pages committed in 15 commits, no reader in the way: SQLite's default would
    have checkpointed them into the database file from the commit that passed 1,000 pages on;
    a kept connection leaves them in the -wal until CHECKPOINT_PAGES. Checked by mutation:
    without the pragma the file grew to the -wal's size and this failed."""
    path = tmp_path / "later.db"
    _blobs(path, commits=15, rows_each=100)
    assert path.stat().st_size < 100 * 4096  # the tables' first pages, none of the rows
    assert Path(f"{path}-wal").stat().st_size > 1_400 * 4096


def test_a_wal_that_grew_past_its_limit_is_cut_back_as_it_starts_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One commit of about 750 pages (3 MB) grows the -wal; checkpointed, the next commit
    starts it over and cuts the file back to WAL_KEPT_BYTES, here 1 MB (and a checkpoint past
    100 pages, so the test stays small). Checked by mutation: without journal_size_limit the
    file stayed at 3 MB and this failed."""
    monkeypatch.setattr(connections, "CHECKPOINT_PAGES", 100)
    monkeypatch.setattr(connections, "WAL_KEPT_BYTES", 1 << 20)
    path = tmp_path / "cut.db"
    _blobs(path, commits=1, rows_each=750)
    assert Path(f"{path}-wal").stat().st_size > 2 << 20
    _blobs(path, commits=1, rows_each=1)
    assert Path(f"{path}-wal").stat().st_size <= 1 << 20


def test_a_forked_child_never_uses_its_parents_connections(tmp_path: Path) -> None:
    """The child opens its own, and leaves the parent's open: after the child has written and
    exited, the parent's kept connection still works and sees the child's row. Checked by
    mutation: without the pool's reset after a fork (the at-fork hook and the pid check in
    take, either of which covers the other), the child took the parent's connection and this
    failed."""
    path = tmp_path / "forked.db"
    write_table(path)
    with kept_connection(path) as parents:
        parents.execute("INSERT INTO t VALUES (1)")
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, write, and leave without running the parent's exits
        try:
            with kept_connection(path) as childs:
                same = childs is parents or childs._conn is parents._conn
                childs.execute("INSERT INTO t VALUES (2)")
            os.write(writer, b"same" if same else b"own")
        finally:
            os._exit(0)
    os.close(writer)
    ends = time.monotonic() + WAIT
    while (done := os.waitpid(pid, os.WNOHANG)) == (0, 0):
        if time.monotonic() > ends:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the forked child did not exit")
        time.sleep(0.02)
    assert os.waitstatus_to_exitcode(done[1]) == 0
    assert os.read(reader, 16) == b"own"
    os.close(reader)
    with kept_connection(path) as again:
        assert again is parents
        assert again.execute("SELECT count(*) FROM t").fetchone()[0] == 2


def test_close_closes_the_free_connections_and_each_in_use_one_as_its_block_ends(
    tmp_path: Path,
) -> None:
    path = tmp_path / "closed.db"
    write_table(path)
    with kept_connection(path) as free:
        pass
    with kept_connection(path) as busy:
        assert busy is free
        with kept_connection(path) as other:
            pass  # given back: free now
        connections.close()
        assert busy.execute("SELECT count(*) FROM t").fetchone()[0] == 0  # still in use
    for conn in (free, other):
        with pytest.raises(sqlite3.ProgrammingError):
            conn._conn.execute("SELECT 1")
    with kept_connection(path) as fresh:
        assert fresh is not free and fresh is not other


def test_an_app_without_triggers_looks_none_up(tmp_path: Path) -> None:
    """Registering and routing twenty invocations reports forty status changes: pynenc's own
    trigger looks up each one's conditions; the quiet one, none. Checked by mutation: with
    any_sourced always true, the quiet trigger looked up as many and this failed."""

    def reported(trigger: str) -> int:
        app = build(tmp_path / f"{trigger}.db", trigger)
        task = app.task(add)
        for n in range(20):
            task(n)
        return type(app.trigger).lookups

    assert reported("CountingStockTrigger") >= 20
    assert reported("CountingTrigger") == 0


def test_an_app_with_a_trigger_still_fires_it(tmp_path: Path) -> None:
    """A real worker runs triggerapp.app (follow runs after each lead that succeeds), on the
    kept classes and the quiet trigger: follow runs, and this process, which registered no
    trigger, finds the worker's in the store. Checked by mutation: with any_sourced always
    false, follow never ran and this failed."""
    env = {
        **os.environ,
        "KEYCLAIM_TEST_DB": str(tmp_path / "triggers.db"),
        "KEYCLAIM_TEST_APP_ID": f"triggers_{uuid.uuid4().hex[:8]}",
        "PYTHONUNBUFFERED": "1",
    }
    os.environ.update({k: env[k] for k in ("KEYCLAIM_TEST_DB", "KEYCLAIM_TEST_APP_ID")})
    sys.modules.pop("triggerapp", None)
    import triggerapp  # built on this test's database and app id

    log = (tmp_path / "worker.log").open("w")
    argv = [sys.executable, "-m", "pynenc", "--app", "triggerapp.app", "runner", "start"]
    worker = subprocess.Popen(
        argv, cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        app = triggerapp.app
        assert type(app.trigger) is QuietSQLiteTrigger
        wait_until(app.trigger.any_sourced, WAIT, "the worker's trigger in the store")
        triggerapp.lead(1)

        def followed() -> list[str]:
            found = app.orchestrator.get_existing_invocations(task=triggerapp.follow)
            ids = [str(i) for i in found]
            done = [i for i in ids if app.orchestrator.get_invocation_status(i) == S.SUCCESS]
            return done

        assert len(wait_until(followed, WAIT, "follow to run after lead")) == 1
    finally:
        for key in ("KEYCLAIM_TEST_DB", "KEYCLAIM_TEST_APP_ID"):
            os.environ.pop(key, None)
        sys.modules.pop("triggerapp", None)
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(WAIT)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(WAIT)
        log.close()


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every statement run on a kept connection opened from here on (SQLite's trace)."""
    found: list[str] = []
    opened = POOL.open

    def traced(path: str) -> connections.KeptConnection:
        conn = opened(path)
        conn._conn.set_trace_callback(found.append)
        return conn

    monkeypatch.setattr(POOL, "open", traced)
    POOL.close()
    return found


def commits(statements: list[str]) -> tuple[int, int]:
    """(transactions begun, commits) among statements, which it then forgets."""
    begun = sum(s.upper().startswith("BEGIN") for s in statements)
    committed = sum(s.strip().upper() == "COMMIT" for s in statements)
    statements.clear()
    return begun, committed


def kept_claim(tmp_path: Path) -> tuple[Pynenc, SimpleNamespace]:
    """A claim's app with kept connections, its parts built; no worker runs its calls."""
    app = claimapp.build(f"one_{uuid.uuid4().hex[:8]}", str(tmp_path / "one.db"), keep=True)
    tasks = claimapp.bound(app, "http://127.0.0.1:9")
    tasks.call_keyed("acct0", "first")  # builds the app's parts: what they write is theirs
    return app, tasks


def test_a_batch_registers_in_one_transaction_and_each_call_as_one_would(
    tmp_path: Path, statements: list[str]
) -> None:
    """`task.parallelize` of a keyed task, under the claim with kept connections: the batch's
    15 calls are written in one transaction (one BEGIN IMMEDIATE, one COMMIT), each key's first
    queued and the rest parked in order, as one call at a time would; one call alone is one
    commit too. Checked by mutation: without `_registering` in `route_calls`, the batch took
    47 commits; without the plain calls of `AtomicClaim.route_calls`, parallelize raised
    NotImplementedError: this test failed both times."""
    app, tasks = kept_claim(tmp_path)
    statements.clear()
    accounts = [f"acct{n}" for n in range(5)]
    batch = [{"account_id": a, "op": f"op{n}"} for n in range(3) for a in accounts]
    group = tasks.call_keyed.parallelize(batch)
    assert commits(statements) == (1, 1)
    ids = [invocation.invocation_id for invocation in group.invocations]
    assert len(set(ids)) == 15
    assert {app.orchestrator.get_invocation_status(i) for i in ids} == {S.REGISTERED}
    # acct0's three wait behind "first"; each other account's first is queued, two wait.
    assert (app.orchestrator.waiting(), app.broker.count_invocations()) == (3 + 4 * 2, 1 + 4)
    tasks.call_keyed("acct9", "alone")
    assert commits(statements) == (1, 1)


def test_a_claim_a_start_and_an_outcome_are_one_transaction_each(
    tmp_path: Path, statements: list[str]
) -> None:
    """A claim with its histories; the start; the outcome with the check that the call still
    holds its claim, its result, its status, its key's hand-over to the next call and the
    histories: one commit each, and the next call queued. Checked by mutation: without `_one`
    in `claim`, the claim took 3 commits; without it in `_until_answered`, the start took 2:
    this test failed both times."""
    app, tasks = kept_claim(tmp_path)
    second = tasks.call_keyed("acct0", "second")
    orchestrator, ctx = app.orchestrator, RunnerContext(runner_cls="ThreadRunner")
    orchestrator.register_runner_heartbeats([ctx.runner_id])
    invocation = app.state_backend.get_invocation(app.broker.retrieve_invocation())
    statements.clear()
    assert orchestrator.claim(invocation, ctx) is Verdict.RUN
    assert commits(statements) == (1, 1)
    orchestrator.set_invocation_status(invocation.invocation_id, S.RUNNING, ctx)
    assert commits(statements) == (1, 1)
    orchestrator.set_invocation_result(invocation, "done", ctx)
    assert commits(statements) == (1, 1)
    assert orchestrator.get_invocation_status(invocation.invocation_id) is S.SUCCESS
    assert app.broker.retrieve_invocation() == second.invocation_id


def test_a_step_waits_for_a_held_write_lock_and_gives_up_at_its_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """transaction.begin looks again for a held write lock, after its own short pauses, takes
    it once the holder commits, and past BUSY_SECONDS raises SQLite's "database is locked", as
    SQLite's busy timeout did; either way the connection's busy timeout is set back. Checked by
    mutation: with one BEGIN IMMEDIATE and no looking again, the first step raised at once;
    without the busy timeout set back, it was 0 after the step."""
    db = str(tmp_path / "lock.db")
    holder, waiter = (
        sqlite3.connect(db, isolation_level=None, check_same_thread=False) for _ in "hw"
    )
    holder.execute("PRAGMA journal_mode=WAL")
    waiter.execute("PRAGMA busy_timeout=30000")  # as on a kept connection
    pauses: list[float] = []
    monkeypatch.setattr(transaction.time, "sleep", lambda s: pauses.append(s) or time_sleep(s))
    holder.execute("BEGIN IMMEDIATE")
    waited = threading.Thread(target=transaction.begin, args=(waiter,))
    waited.start()
    wait_until(lambda: len(pauses) >= 3, WAIT, "the step to look again three times")
    holder.execute("COMMIT")
    waited.join(WAIT)
    assert not waited.is_alive() and waiter.in_transaction
    assert waiter.execute("PRAGMA busy_timeout").fetchone() == (30_000,)
    waiter.execute("COMMIT")
    holder.execute("BEGIN IMMEDIATE")
    monkeypatch.setattr(transaction, "BUSY_SECONDS", 0.05)
    with pytest.raises(sqlite3.OperationalError, match="database is locked"):
        transaction.begin(waiter)
    assert waiter.execute("PRAGMA busy_timeout").fetchone() == (30_000,)
    assert not waiter.in_transaction


def test_one_thread_of_a_process_looks_for_a_held_write_lock_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three threads' steps behind a write lock held elsewhere: one looks for it again and
    again, the other two wait for their turn without looking; once it is free, each takes it in
    turn. Checked by mutation: without the process's gate (`_looking` never acquired), all
    three threads looked, and this test failed."""
    db = str(tmp_path / "gate.db")
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("PRAGMA journal_mode=WAL")
    waiters = [sqlite3.connect(db, isolation_level=None, check_same_thread=False) for _ in "abc"]
    looked: list[str] = []  # the steps' threads that paused between looks (time is global)

    def pause(seconds: float) -> None:
        if (name := threading.current_thread().name).startswith("step"):
            looked.append(name)
        time_sleep(seconds)

    monkeypatch.setattr(transaction.time, "sleep", pause)

    def step(conn: sqlite3.Connection) -> None:
        transaction.begin(conn)
        conn.execute("COMMIT")

    holder.execute("BEGIN IMMEDIATE")
    threads = [
        threading.Thread(target=step, args=(w,), name=f"step{n}") for n, w in enumerate(waiters)
    ]
    for thread in threads:
        thread.start()
    wait_until(lambda: len(looked) >= 12, WAIT, "a step to look again a dozen times")
    assert len(set(looked)) == 1, set(looked)
    holder.execute("COMMIT")
    for thread in threads:
        thread.join(WAIT)
    assert not any(thread.is_alive() for thread in threads)
    assert not any(w.in_transaction for w in waiters)


def test_the_loops_take_is_one_transaction(tmp_path: Path, statements: list[str]) -> None:
    """The runner's loop (`get_invocations_to_run`) takes a call off the queue and claims it in
    one step: one BEGIN, one COMMIT. Checked by mutation: with pynenc's broker taking the call
    (`_dequeuer` not overridden), its own BEGIN IMMEDIATE raised inside the step and this test
    failed."""
    app, _ = kept_claim(tmp_path)
    orchestrator, ctx = app.orchestrator, RunnerContext(runner_cls="ThreadRunner")
    orchestrator.register_runner_heartbeats([ctx.runner_id])
    list(orchestrator.get_invocations_to_run(0, ctx))  # the loop's first sweep, out of the way
    statements.clear()
    (taken,) = orchestrator.get_invocations_to_run(1, ctx)
    assert orchestrator.get_invocation_status(taken.invocation_id) is S.PENDING
    assert commits(statements) == (1, 1)


def test_a_loop_that_starts_what_it_takes_stores_its_running_in_the_take(
    tmp_path: Path, statements: list[str]
) -> None:
    """The wake runner's loop starts each call it takes in a thread at once (`starts_taken`):
    its take claims the call and stores its RUNNING in one transaction, and pynenc's own
    RUNNING write, as the thread then runs the call, is skipped: one RUNNING in its history,
    one transaction fewer a call. Checked by mutation: without `_start_in_step` in the loop's
    take, the call was left PENDING by the take and this test failed."""
    app, _ = kept_claim(tmp_path)
    orchestrator, ctx = app.orchestrator, RunnerContext(runner_cls="WakeRunner")
    orchestrator.register_runner_heartbeats([ctx.runner_id])
    list(orchestrator.get_invocations_to_run(0, ctx))  # the loop's first sweep, out of the way
    orchestrator.starts_taken()
    statements.clear()
    (taken,) = orchestrator.get_invocations_to_run(1, ctx)
    assert commits(statements) == (1, 1)
    assert orchestrator.get_invocation_status(taken.invocation_id) is S.RUNNING
    orchestrator.set_invocation_status(taken.invocation_id, S.RUNNING, ctx)  # as run() does
    assert commits(statements) == (0, 0)
    orchestrator.set_invocation_result(taken, "done", ctx)
    assert orchestrator.get_invocation_status(taken.invocation_id) is S.SUCCESS
    history = app.state_backend.get_history(taken.invocation_id)
    assert [e.status_record.status for e in history].count(S.RUNNING) == 1


def test_a_call_its_loop_took_and_could_not_start_goes_back_to_the_queue_at_once(
    tmp_path: Path,
) -> None:
    """The loop took a call and stored its RUNNING, and its thread did not start (the wake
    runner's `not_started`): the call goes through KILLED back to the queue at once, not at the
    next loop (a runner stopping first would leave it RUNNING with no thread), the loop takes
    it again, and it runs once to its end. Checked by mutation: with `not_started` rerouting
    the call directly, as the runner did while the take left it PENDING, pynenc refused
    RUNNING -> REROUTED; with it left to the next loop, it was still RUNNING: this test failed
    both times."""
    app, _ = kept_claim(tmp_path)
    orchestrator, ctx = app.orchestrator, RunnerContext(runner_cls="WakeRunner")
    orchestrator.register_runner_heartbeats([ctx.runner_id])
    list(orchestrator.get_invocations_to_run(0, ctx))
    orchestrator.starts_taken()
    (taken,) = orchestrator.get_invocations_to_run(1, ctx)
    orchestrator.not_started(taken.invocation_id, ctx)
    assert orchestrator.get_invocation_status(taken.invocation_id) is S.REROUTED
    (again,) = orchestrator.get_invocations_to_run(1, ctx)
    assert again.invocation_id == taken.invocation_id
    orchestrator.set_invocation_status(again.invocation_id, S.RUNNING, ctx)  # as run() does
    orchestrator.set_invocation_result(again, "done", ctx)
    assert orchestrator.get_invocation_status(again.invocation_id) is S.SUCCESS
    history = [e.status_record.status for e in app.state_backend.get_history(again.invocation_id)]
    assert [s for s in history if s in (S.RUNNING, S.KILLED, S.SUCCESS)] == [
        S.RUNNING,
        S.KILLED,
        S.RUNNING,
        S.SUCCESS,
    ]


def test_a_wake_runner_that_cannot_start_a_thread_gives_its_call_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wake runner's loop, with kept connections, takes a call (its RUNNING in the take) and
    cannot start a thread for it: the call is back on the queue, not left RUNNING with no
    thread. Checked by mutation: with the runner rerouting it directly, as before the loop's
    take stored RUNNING, pynenc refused RUNNING -> REROUTED inside the loop and this test
    failed."""
    app = claimapp.build(
        f"w_{uuid.uuid4().hex[:8]}", str(tmp_path / "w.db"), runner="wake", keep=True
    )
    call = claimapp.bound(app, "http://127.0.0.1:9").call_keyed("acct0", "first")
    runner, refused = app.runner, []
    runner._on_start()
    try:

        def start(thread: threading.Thread) -> None:
            refused.append(thread.name)
            raise RuntimeError("can't start new thread")

        monkeypatch.setattr(threading.Thread, "start", start)
        runner._iteration()  # each free slot takes the call again, and gives it back again
        monkeypatch.undo()
        assert refused
        assert app.orchestrator.get_invocation_status(call.invocation_id) is S.REROUTED
    finally:
        runner._on_stop()


def test_a_call_claimed_under_a_rate_is_started_by_its_thread_not_by_the_loops_take(
    tmp_path: Path, statements: list[str]
) -> None:
    """A rated call counts from its RUNNING, with a grace that covers only its way from there
    to the provider: the loop's take leaves it PENDING even where the loop starts what it
    takes, and its thread's RUNNING is stored (one transaction) as it runs. Checked by
    mutation: with the take starting rated calls too, the call was RUNNING after the take and
    this test failed; so did G with three workers, throttled in 3 rounds of 20."""
    app, tasks = kept_claim(tmp_path)
    rated = tasks.call_rated("acct1", "first").invocation_id
    orchestrator, ctx = app.orchestrator, RunnerContext(runner_cls="WakeRunner")
    orchestrator.register_runner_heartbeats([ctx.runner_id])
    list(orchestrator.get_invocations_to_run(0, ctx))
    orchestrator.starts_taken()
    taken = {i.invocation_id for i in orchestrator.get_invocations_to_run(2, ctx)}
    assert rated in taken
    assert orchestrator.get_invocation_status(rated) is S.PENDING
    statements.clear()
    orchestrator.set_invocation_status(rated, S.RUNNING, ctx)  # as run() does
    assert commits(statements) == (1, 1)
    assert orchestrator.get_invocation_status(rated) is S.RUNNING


def handed_on(tmp_path: Path) -> tuple[Pynenc, Any, RunnerContext, str]:
    """A claim's app with kept connections whose first call, claimed by the loop and run, has
    just ended with its thread taking what it hands on: the app, its orchestrator, the runner's
    context and the handed call's id, now on the queue."""
    app, orchestrator, ctx, first, handed = result_handing_on(tmp_path, in_step=None)
    orchestrator.set_invocation_result(first, "done", ctx)
    return app, orchestrator, ctx, handed


def test_a_hand_overs_take_claims_and_starts_the_call_in_one_transaction(
    tmp_path: Path, statements: list[str]
) -> None:
    """A call's outcome hands its key on; the thread takes the handed call off the queue,
    claims it and stores its RUNNING in one transaction, and pynenc's own RUNNING write, as the
    thread then runs the call, is skipped: one RUNNING in its history. Checked by mutation:
    with `_start_in_step` writing nothing, the handed call was left PENDING by the take and
    this test failed."""
    app, orchestrator, ctx, handed = handed_on(tmp_path)
    statements.clear()
    taken = orchestrator.take_handed(ctx)
    assert taken is not None and taken.invocation_id == handed
    assert commits(statements) == (1, 1)
    assert orchestrator.get_invocation_status(handed) is S.RUNNING
    orchestrator.set_invocation_status(handed, S.RUNNING, ctx)  # as run() does
    assert commits(statements) == (0, 0)
    history = app.state_backend.get_history(handed)
    assert [e.status_record.status for e in history].count(S.RUNNING) == 1


def test_a_hand_overs_take_whose_commit_fails_leaves_the_calls_start_to_its_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit of a hand-over's take is not answered ("database is locked"): the take, the
    claim and the RUNNING in it are undone and the call is back on the queue. The loop then
    takes it and runs it in the same process: its RUNNING is stored as it runs, and its outcome
    after. Checked by mutation: with `_start_in_step` noting the call as started before the
    commit (as it first did), the loop's run skipped its RUNNING, the call stayed PENDING and
    its outcome was refused (`outlived its claim`): this test failed."""
    app, orchestrator, ctx, handed = handed_on(tmp_path)
    commit, failed = SQLiteConnection.__exit__, []

    def unanswered(self: SQLiteConnection, exc_type: type | None, *rest: object) -> None:
        if exc_type is None and not failed:  # the take's commit, rolled back as it is given back
            failed.append(True)
            raise sqlite3.OperationalError("database is locked")
        commit(self, exc_type, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(SQLiteConnection, "__exit__", unanswered)
    assert orchestrator.take_handed(ctx) is None and failed
    assert orchestrator.get_invocation_status(handed) is not S.RUNNING
    (again,) = orchestrator.get_invocations_to_run(1, ctx)
    assert again.invocation_id == handed
    orchestrator.set_invocation_status(handed, S.RUNNING, ctx)  # as run() does
    assert orchestrator.get_invocation_status(handed) is S.RUNNING
    orchestrator.set_invocation_result(again, "done", ctx)
    assert orchestrator.get_invocation_status(handed) is S.SUCCESS
    history = app.state_backend.get_history(handed)
    assert [e.status_record.status for e in history].count(S.RUNNING) == 1


def test_a_call_a_hand_over_took_and_started_is_started_again_by_its_retry(
    tmp_path: Path,
) -> None:
    """The handed call, taken and started by the thread that handed its key on, raises and is
    retried (RETRY, back on the queue): the loop takes it again and its next RUNNING is stored
    as it runs, one per try. Checked by mutation: with set_invocation_status keeping the call
    noted as started (no `discard`), the retry's RUNNING was skipped too, the call left
    PENDING, and this test failed."""
    app, orchestrator, ctx, retried = handed_on(tmp_path)
    taken = orchestrator.take_handed(ctx)
    assert taken is not None and taken.invocation_id == retried
    orchestrator.set_invocation_status(retried, S.RUNNING, ctx)  # as run() does: skipped
    takes = list(inspect.signature(SQLiteOrchestrator.set_invocation_retry).parameters)[1]
    orchestrator.set_invocation_retry(taken if takes == "invocation" else retried, KeyError(), ctx)
    (again,) = orchestrator.get_invocations_to_run(1, ctx)
    assert again.invocation_id == retried
    orchestrator.set_invocation_status(retried, S.RUNNING, ctx)
    assert orchestrator.get_invocation_status(retried) is S.RUNNING
    orchestrator.set_invocation_result(again, "done", ctx)
    history = [e.status_record.status for e in app.state_backend.get_history(retried)]
    tries = [s for s in history if s in (S.RUNNING, S.RETRY, S.SUCCESS)]
    assert tries == [S.RUNNING, S.RETRY, S.RUNNING, S.SUCCESS]


def result_handing_on(
    tmp_path: Path, in_step: bool | None
) -> tuple[Pynenc, Any, RunnerContext, Any, str]:
    """handed_on, up to the first call's result, in a thread that keeps what it hands on: the
    wake runner's, which asks the result's step to take the next call while `in_step` (its
    runner runs), or (None) one that takes it in a step of its own. The app, its orchestrator,
    the runner's context, the first call, and the id of the call it hands on to."""
    app, tasks = kept_claim(tmp_path)
    handed = tasks.call_keyed("acct0", "second").invocation_id
    orchestrator, ctx = app.orchestrator, RunnerContext(runner_cls="ThreadRunner")
    orchestrator.register_runner_heartbeats([ctx.runner_id])
    (first,) = orchestrator.get_invocations_to_run(1, ctx)
    orchestrator.set_invocation_status(first.invocation_id, S.RUNNING, ctx)
    orchestrator.takes_handed(None if in_step is None else lambda: in_step)
    return app, orchestrator, ctx, first, handed


def test_a_results_step_takes_the_handed_call_in_the_same_transaction(
    tmp_path: Path, statements: list[str]
) -> None:
    """The wake runner's thread: the first call's result, the hand-over of its key, and the
    take of the handed call (claimed, RUNNING stored) are one transaction; take_handed then
    gives the call without a statement, and pynenc's RUNNING write as it runs is skipped; the
    take's lines name no call (not the one whose result it is). Checked by mutation: with
    set_invocation_result not asking for the take (`then` left out), the take was a
    transaction of its own, (1, 1) after the result's; with the take in its call's context,
    its lines named that call: this test failed each time."""
    app, orchestrator, ctx, first, handed = result_handing_on(tmp_path, in_step=True)
    records: list[logging.LogRecord] = []
    written = logging.Handler()
    written.emit = records.append  # type: ignore[method-assign]
    app.logger.addHandler(written)
    statements.clear()
    ending = first.swap_context()  # as run() does: the result is stored in its call's context
    orchestrator.set_invocation_result(first, "done", ctx)
    first.reset_context(ending)
    assert commits(statements) == (1, 1)
    lines = [r for r in records if r.getMessage().startswith(f"invocation:{handed}")]
    assert lines and {getattr(r, "invocation_id", None) for r in lines} == {None}
    assert orchestrator.get_invocation_status(handed) is S.RUNNING
    taken = orchestrator.take_handed(ctx)
    assert taken is not None and taken.invocation_id == handed
    orchestrator.set_invocation_status(handed, S.RUNNING, ctx)  # as run() does: skipped
    assert commits(statements) == (0, 0)
    assert orchestrator.get_invocation_status(first.invocation_id) is S.SUCCESS
    history = app.state_backend.get_history(handed)
    assert [e.status_record.status for e in history].count(S.RUNNING) == 1


def test_a_take_that_fails_in_a_results_step_is_undone_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The take in a result's step fails once the handed call is claimed (its RUNNING cannot
    be written): the take is undone alone (a savepoint), the result stored, the handed call
    neither PENDING nor RUNNING and still on the queue, and the loop takes it. Checked by
    mutation: with transaction.part's savepoint released, never rolled back, the claim's
    PENDING was committed with the result and this test failed."""
    _, orchestrator, ctx, first, handed = result_handing_on(tmp_path, in_step=True)

    def unwritable(invocation_id: str, runner_ctx: RunnerContext) -> None:
        raise ValueError("an unwritable RUNNING")

    monkeypatch.setattr(orchestrator, "_start_in_step", unwritable)
    orchestrator.set_invocation_result(first, "done", ctx)
    monkeypatch.undo()
    assert orchestrator.get_invocation_status(first.invocation_id) is S.SUCCESS
    assert orchestrator.take_handed(ctx) is None
    assert orchestrator.get_invocation_status(handed) not in (S.PENDING, S.RUNNING)
    (again,) = orchestrator.get_invocations_to_run(1, ctx)
    assert again.invocation_id == handed


def test_a_take_that_loses_its_results_step_loses_it_loudly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The take in a result's step meets a full disk, and SQLite rolls the whole step back, the
    result with it: the error reaches the result's writer (StepLost), the call is still
    RUNNING here, not silently left so, and its result, written again, is stored. Checked by
    mutation: with `_take_in_step` catching StepLost as any take's failure and `one` not
    looking at its transaction as it ends, no error was raised, the result was lost and this
    test failed (either one alone holds it)."""
    _, orchestrator, ctx, first, handed = result_handing_on(tmp_path, in_step=True)
    write_table(orchestrator.sqlite_db_path)

    def full_disk(runner_ctx: RunnerContext, beside: str) -> None:
        with orchestrator._connect() as conn:
            (pages,) = conn.execute("PRAGMA page_count").fetchone()
            conn.execute(f"PRAGMA max_page_count = {pages}")
            try:
                conn.execute("INSERT INTO t VALUES (zeroblob(100000))")
            finally:
                conn._conn.execute("PRAGMA max_page_count = 1073741823")

    monkeypatch.setattr(orchestrator, "_take_oldest", full_disk)
    with pytest.raises(transaction.StepLost):
        orchestrator.set_invocation_result(first, "done", ctx)
    monkeypatch.undo()
    assert orchestrator.get_invocation_status(first.invocation_id) is S.RUNNING
    orchestrator.takes_handed(lambda: True)
    orchestrator.set_invocation_result(first, "done", ctx)
    assert orchestrator.get_invocation_status(first.invocation_id) is S.SUCCESS
    taken = orchestrator.take_handed(ctx)
    assert taken is not None and taken.invocation_id == handed


@pytest.mark.parametrize("stops", ["before the result", "after the result's take"])
def test_a_stopping_runner_runs_no_handed_call(tmp_path: Path, stops: str) -> None:
    """The runner stops before its call's result is stored: the result's step takes nothing.
    Or it stops once the step took the handed call (RUNNING), before the thread runs it: the
    call goes back to the queue at once (`not_started`). Either way the loop finds it there.
    Checked by mutation: with the step asking no `in_step()`, the first case's call was
    RUNNING; with take_handed returning the step's call whatever `take`, the second's was:
    this test failed."""
    before = stops == "before the result"
    _, orchestrator, ctx, first, handed = result_handing_on(tmp_path, in_step=not before)
    orchestrator.set_invocation_result(first, "done", ctx)
    assert (orchestrator.get_invocation_status(handed) is S.RUNNING) is not before
    assert orchestrator.take_handed(ctx, take=False) is None
    assert orchestrator.get_invocation_status(handed) is not S.RUNNING
    (again,) = orchestrator.get_invocations_to_run(1, ctx)
    assert again.invocation_id == handed


def test_a_steps_write_lock_is_taken_at_its_first_statement(tmp_path: Path) -> None:
    """Inside `one`, what runs before the block's first statement (pynenc building a call it
    registers) runs without the database's write lock; from that statement on, the lock is
    held until the commit. Checked by mutation: with `one` beginning at once (as it did), the
    other connection's BEGIN IMMEDIATE met a held lock before any statement: this test
    failed."""
    db = tmp_path / "lazy.db"
    write_table(db)
    POOL.unkept.discard(str(db))
    with closing(sqlite3.connect(db, timeout=0)) as other:

        def free() -> bool:
            try:
                other.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:
                return False
            other.execute("ROLLBACK")
            return True

        with transaction.one(db):
            assert free()
            with kept_connection(db) as conn:
                conn.execute("INSERT INTO t VALUES (1)")
            assert not free()
        assert free()
    assert rows(db) == 1


@pytest.mark.parametrize("caught", [False, True])
def test_a_step_sqlite_rolls_back_under_a_part_is_lost_loudly(tmp_path: Path, caught: bool) -> None:
    """A full disk in a part of a step (a result's take): SQLite rolls the whole step back, the
    row written before the part with it. The part raises StepLost; caught there (as a take's
    failure is), the next statement raises it rather than start a second transaction, and
    the step raises it as it ends rather than commit nothing. Checked by mutation: with `part`
    going back to its savepoint whatever the transaction's state, it raised "no such
    savepoint", which the take caught, the step committed nothing and ended without an error,
    and this test failed."""
    db = tmp_path / "full.db"
    write_table(db)
    POOL.unkept.discard(str(db))
    with pytest.raises(transaction.StepLost), transaction.one(db):
        with kept_connection(db) as conn:
            conn.execute("INSERT INTO t VALUES (1)")
            (pages,) = conn.execute("PRAGMA page_count").fetchone()
            conn.execute(f"PRAGMA max_page_count = {pages}")
        try:
            with transaction.part(db), kept_connection(db) as conn:
                conn.execute("INSERT INTO t VALUES (zeroblob(100000))")
        except transaction.StepLost:
            if not caught:
                raise
            with pytest.raises(transaction.StepLost), kept_connection(db) as conn:
                conn.execute("INSERT INTO t VALUES (2)")
    assert rows(db) == 0


@pytest.mark.parametrize("ends", ["committed", "rolled back"])
def test_a_steps_log_lines_are_written_once_it_has_let_the_lock_go(
    tmp_path: Path, ends: str
) -> None:
    """A line the app logs inside a step is written as the step ends, committed or rolled back,
    with the lock free by then; one logged outside is written at once. Checked by mutation:
    with `lines_after` adding no filter, the line was written while the step held the write
    lock, and this test failed."""
    app, _ = kept_claim(tmp_path)
    db, written = app.orchestrator.sqlite_db_path, []

    class Lock(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            with closing(sqlite3.connect(db, timeout=0)) as other:
                try:
                    other.execute("BEGIN IMMEDIATE")
                    other.execute("ROLLBACK")
                    written.append((record.getMessage(), "free"))
                except sqlite3.OperationalError:
                    written.append((record.getMessage(), "held"))

    app.logger.addHandler(Lock())
    undone = pytest.raises(ValueError) if ends == "rolled back" else nullcontext()
    with undone, app.orchestrator._one():
        with kept_connection(db) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS t (n INTEGER)")
        app.logger.warning("inside")
        assert written == []
        if ends == "rolled back":
            raise ValueError("undone")
    app.logger.warning("outside")
    assert written == [("inside", "free"), ("outside", "free")]


def test_a_loop_that_finds_the_queue_empty_takes_no_write_lock(
    tmp_path: Path, statements: list[str]
) -> None:
    """The runner's loop looks (a read, no write lock) before it takes: with nothing queued,
    no transaction. Checked by mutation: with `_may_have_queued` always True, the empty look
    was a BEGIN IMMEDIATE and a COMMIT, and this test failed."""
    app, _ = kept_claim(tmp_path)
    orchestrator, ctx = app.orchestrator, RunnerContext(runner_cls="ThreadRunner")
    orchestrator.register_runner_heartbeats([ctx.runner_id])
    list(orchestrator.get_invocations_to_run(1, ctx))  # the kept call, and the first sweep
    statements.clear()
    assert list(orchestrator.get_invocations_to_run(1, ctx)) == []
    assert commits(statements) == (0, 0)


def test_an_outcome_too_large_to_keep_inline_is_stored(tmp_path: Path) -> None:
    """A result of 1 KB or more goes to pynenc's client data store, and an error as large
    too. pynenc's writes it on a connection of its own (`sqlite3.connect`): inside the result's
    step, which holds the database's write lock, that write waited on the step itself and
    failed "database is locked" at each try, until the dead-after window; the outcome was left
    unstored and the call ran again, to end the same way. Kept, the write joins the step.
    Checked by mutation: with keep_connections selecting pynenc's client data store, this
    test failed (SUCCESS never stored)."""
    windows = {"dead_after": 2.0, "longest_call": 1.0}
    app = claimapp.build(
        f"big_{uuid.uuid4().hex[:8]}", str(tmp_path / "big.db"), **windows, keep=True
    )
    tasks = claimapp.bound(app, "http://127.0.0.1:9")
    calls = [tasks.call_keyed(f"acct{n}", "big") for n in range(2)]
    orchestrator, ctx = app.orchestrator, RunnerContext(runner_cls="ThreadRunner")
    orchestrator.register_runner_heartbeats([ctx.runner_id])
    big, error = "x" * 2048, RuntimeError("y" * 2048)
    for outcome in (big, error):
        (invocation,) = orchestrator.get_invocations_to_run(1, ctx)
        orchestrator.set_invocation_status(invocation.invocation_id, S.RUNNING, ctx)
        if outcome is big:
            orchestrator.set_invocation_result(invocation, big, ctx)
        else:
            orchestrator.set_invocation_exception(invocation, error, ctx)
    statuses = [orchestrator.get_invocation_status(c.invocation_id) for c in calls]
    assert statuses == [S.SUCCESS, S.FAILED]
    assert app.state_backend.get_result(calls[0].invocation_id) == big
    assert str(app.state_backend.get_exception(calls[1].invocation_id)) == "y" * 2048
