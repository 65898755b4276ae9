"""Several of pynenc's writes in one SQLite transaction: one write lock, one commit.

SQLite has one write lock per database, and every worker thread and producer waits its turn for
it: with 500 accounts, 4 workers of 8 threads each and a producer, the lock, not the cores,
set the pace (about seven transactions per call: registration, claim, RUNNING, result,
SUCCESS, the waiters' release, the histories). Inside `one(path)`, every block this thread
opens on the kept connections of path joins one transaction, which commits once at the end,
or rolls back whole on an error. The write lock is taken at the first statement, not as `one`
begins: what runs before it (pynenc building the call it registers: a producer's whole
enqueue ran under the lock) runs beside the others' steps. A `part` of a transaction is a
savepoint, undone alone. The app's log lines made inside a step are written as it ends
(`lines_after`): formatting and writing them was a fifth of what a worker did under the lock.
Only where every component of the app keeps its connections (`keeps_all`): one opening its
own would wait on this transaction's write lock.
"""

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from pynenc.util.sqlite_utils import SQLiteConnection

from keyclaim import connections
from keyclaim.connections import POOL

BUSY_SECONDS = 30.0  # how long a step waits for the write lock, as pynenc's connections do
FIRST_PAUSE, LONGEST_PAUSE = 0.0001, 0.002  # seconds between looks at a held write lock
# One thread of a process looks for the write lock at a time; the others wait here, asleep.
_looking = threading.Lock()


def _after_fork() -> None:
    global _looking
    _looking = threading.Lock()  # a parent's thread may have held it as the process forked


os.register_at_fork(after_in_child=_after_fork)


class StepLost(sqlite3.OperationalError):
    """SQLite rolled a whole step back under it (an I/O error, a full disk, an interrupt):
    nothing of the step is stored, and no later statement may start a second one in its place.
    Raised on, whoever caught the error that undid it."""


class Joined(SQLiteConnection):
    """A block inside `one`: the transaction's connection, which the block neither commits nor
    gives back (the transaction's own block does, once). What it asks to run after its commit
    (`after_commit`) runs after the transaction's."""

    def __init__(self, conn: Any) -> None:
        super().__init__(conn)
        self.after: list[Callable[[], None]] = []
        self.begun = False
        self.lines: list[tuple[logging.Logger, logging.LogRecord]] = []

    def begin_once(self) -> None:
        """The write lock, at the block's first statement; never a second transaction."""
        if self._conn.in_transaction:
            self.begun = True
        elif self.begun:
            raise StepLost("SQLite rolled this step back: nothing of it is stored")
        else:
            begin(self._conn)
            self.begun = True

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        self.begin_once()
        return super().execute(sql, parameters)

    def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:
        self.begin_once()
        return self._conn.executemany(sql, parameters)

    def __exit__(self, exc_type: type | None, exc_val: Any, exc_tb: Any) -> None:
        pass

    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        raise RuntimeError("a block inside one transaction cannot roll back alone")


def step(conn: Any) -> None:
    """The write lock for a step on conn: inside `one`, its transaction's (Joined.begin_once);
    else a transaction of its own, unless one is open."""
    if isinstance(conn, Joined):
        conn.begin_once()
    elif not conn.in_transaction:
        begin(conn._conn)


def one(path: Any, logger: logging.Logger | None = None) -> AbstractContextManager[None]:
    """This thread's blocks on path, until the end, in one transaction (inside one already:
    that one), begun at their first statement, logger's lines written as it ends. A step
    SQLite rolled back under it, whatever caught the error, raises StepLost here rather than
    commit nothing."""
    path = str(path)
    return nullcontext() if path in vars(POOL.joined) else _one(path, logger)


@contextmanager
def _one(path: str, logger: logging.Logger | None) -> Iterator[None]:
    joined = vars(POOL.joined)
    if logger is not None:
        lines_after(logger)
    inner = None
    try:
        with POOL.take(path) as conn:  # commits as the block ends, or rolls back on an error
            joined[path] = inner = Joined(conn._conn)
            try:
                yield
            finally:
                del joined[path]
            if inner.begun and not conn.in_transaction:
                raise StepLost("SQLite rolled this step back: nothing of it is stored")
    finally:
        for line in inner.lines if inner is not None else ():
            line[0].callHandlers(line[1])
    for then in inner.after:
        then()


class LinesAfter(logging.Filter):
    """A logger's lines made inside a step, written once it ends (committed or not), in their
    order and with their own times: formatting and writing them held the write lock."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self.logger = logger

    def filter(self, record: logging.LogRecord) -> bool:
        for inner in vars(POOL.joined).values():
            inner.lines.append((self.logger, record))
            return False
        return True


def lines_after(logger: logging.Logger) -> None:
    """Write logger's lines made inside a step once the step ends (LinesAfter), once."""
    if not any(isinstance(f, LinesAfter) for f in logger.filters):
        logger.addFilter(LinesAfter(logger))


@contextmanager
def part(path: Any) -> Iterator[Callable[[Callable[[], None]], None]]:
    """Inside `one`: a part of its transaction (a savepoint) that an error undoes alone, with
    what it asked to run after the commit; the error is raised on (as StepLost where SQLite
    rolled the whole step back). It gives after_commit."""
    inner = vars(POOL.joined)[str(path)]
    inner.begin_once()
    after = len(inner.after)
    inner._conn.execute("SAVEPOINT part")
    try:
        yield lambda then: after_commit(path, then)
    except BaseException as exc:
        if not inner._conn.in_transaction:  # no savepoint left to go back to
            raise StepLost(f"SQLite rolled this step back: {exc}") from exc
        inner._conn.execute("ROLLBACK TO part")
        inner._conn.execute("RELEASE part")
        del inner.after[after:]
        raise
    inner._conn.execute("RELEASE part")


def begin(conn: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE, the write lock looked for again after pauses from 0.1 ms, doubling up to
    2 ms, for up to BUSY_SECONDS. SQLite's own busy handler sleeps 1, 2, 5, 10 ms and longer
    between looks: a worker's step behind a producer registering a backlog, one transaction
    after another, kept missing the gaps between them (E's busy account, 1,000 backlog: 89 to
    93% of its floor; looking this often, 93 to 94%). SQLite's own wait is off meanwhile,
    then set back. One thread of the process looks at a time, the others asleep on a lock: at
    500 accounts, a worker's eight threads and its loop all looking spent 29% of the time it
    held the GIL in failed BEGINs."""
    (kept,) = conn.execute("PRAGMA busy_timeout").fetchone()
    conn.execute("PRAGMA busy_timeout=0")
    try:
        ends = time.monotonic() + BUSY_SECONDS
        if _took(conn, ends):  # free: no wait for the others of this process
            return
        if not (looking := _looking).acquire(timeout=max(0.0, ends - time.monotonic())):
            raise sqlite3.OperationalError("database is locked")
        try:
            pause = FIRST_PAUSE
            while not _took(conn, ends):
                time.sleep(pause)
                pause = min(2 * pause, LONGEST_PAUSE)
        finally:
            looking.release()
    finally:
        conn.execute(f"PRAGMA busy_timeout={int(kept)}")


def _took(conn: sqlite3.Connection, ends: float) -> bool:
    """Whether BEGIN IMMEDIATE took the write lock; past `ends`, SQLite's "database is locked"."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        return True
    except sqlite3.OperationalError as exc:
        if "database is locked" not in str(exc) or time.monotonic() >= ends:
            raise
        return False


def after_commit(path: Any, then: Callable[[], None]) -> None:
    """then() once what this thread wrote to path is committed: now, outside `one`."""
    if inner := vars(POOL.joined).get(str(path)):
        inner.after.append(then)
    else:
        then()


def keeps_all(app: Any) -> bool:
    """Whether every SQLite component of app opens its blocks on kept connections."""
    kept = (
        connections.KeptSQLiteOrchestrator,
        connections.KeptSQLiteBroker,
        connections.KeptSQLiteStateBackend,
        connections.KeptSQLiteTrigger,
    )
    parts = (app.orchestrator, app.broker, app.state_backend, app.trigger)
    path = str(app.orchestrator.sqlite_db_path)
    return path not in POOL.unkept and all(map(isinstance, parts, kept))
