"""Several of pynenc's writes in one SQLite transaction: one write lock, one commit.

SQLite has one write lock per database, and every worker thread and producer waits its turn for
it: with 500 accounts, 4 workers of 8 threads each and a producer, the lock, not the cores,
set the pace (about seven transactions per call: registration, claim, RUNNING, result,
SUCCESS, the waiters' release, the histories). Inside `one(path)`, every block this thread
opens on the kept connections of path joins one transaction, which commits once at the end,
or rolls back whole on an error. Only where every component of the app keeps its connections
(`keeps_all`): one opening its own would wait on this transaction's write lock.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pynenc.util.sqlite_utils import SQLiteConnection

from keyclaim import connections
from keyclaim.connections import POOL


class Joined(SQLiteConnection):
    """A block inside `one`: the transaction's connection, which the block neither commits nor
    gives back (the transaction's own block does, once). What it asks to run after its commit
    (`after_commit`) runs after the transaction's."""

    def __init__(self, conn: Any) -> None:
        super().__init__(conn)
        self.after: list[Callable[[], None]] = []

    def __exit__(self, exc_type: type | None, exc_val: Any, exc_tb: Any) -> None:
        pass

    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        raise RuntimeError("a block inside one transaction cannot roll back alone")


@contextmanager
def one(path: Any) -> Iterator[None]:
    """This thread's blocks on path, until the end, in one transaction (inside one already:
    that one)."""
    path, joined = str(path), vars(POOL.joined)
    if path in joined:
        yield
        return
    with POOL.take(path) as conn:  # commits as the block ends, or rolls back on an error
        conn.execute("BEGIN IMMEDIATE")
        joined[path] = inner = Joined(conn._conn)
        try:
            yield
        finally:
            del joined[path]
    for then in inner.after:
        then()


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
