"""Kept SQLite connections: pynenc's SQLite classes, each connection opened once and reused.

pynenc opens a new connection for every operation of its SQLite classes and runs
`PRAGMA journal_mode=WAL` on each, which waits on the database's locks. These classes are
pynenc's own, their methods pynenc's code relinked, so that a `with sqlite_conn(path) as conn:`
block takes a connection from this process's pool for that file: keyclaim/README.md, "SQLite
connections opened once", says how, and what it relies on.

Selected by class name (`keyclaim.keep_connections(builder)`, with or without the claim).
Written and tested against pynenc 0.3.1 and 0.4.0 (keyclaim.versions), whose SQLite modules
open their connections through the module-level name `sqlite_conn`; anything else refuses to
build. The upstream change that retires it: each SQLite component takes its connection from one
overridable method, kept per thread, with the journal mode set when the tables are created
(the repo's docs/upstream.md, section 6).
"""

import atexit
import os
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from functools import cached_property
from types import CodeType, FunctionType, SimpleNamespace
from typing import Any

from pynenc.broker.sqlite_broker import SQLiteBroker
from pynenc.client_data_store import sqlite_client_data_store
from pynenc.client_data_store.sqlite_client_data_store import SQLiteClientDataStore
from pynenc.orchestrator.sqlite_orchestrator import SQLiteOrchestrator
from pynenc.state_backend.sqlite_state_backend import SQLiteStateBackend
from pynenc.trigger.sqlite_trigger import SQLiteTrigger
from pynenc.util.sqlite_utils import SQLiteConnection, create_sqlite_connection

from keyclaim import versions
from keyclaim.config import KEEP_KEY
from keyclaim.errors import UntestedVersion

OPENER = "sqlite_conn"  # the name pynenc's SQLite modules open their connections by
KEEP = 8  # free connections kept per database file; more are closed as they come back
# A commit that leaves the -wal at SQLite's default of 1,000 pages or more checkpoints it, in
# the committing thread, with two syncs; while readers keep the -wal from starting over, every
# commit past it does. At 500 accounts that was 1,863 syncs for 2,000 calls, the producer's
# registrations among the ones who paid. Past CHECKPOINT_PAGES instead: about 450 (README).
CHECKPOINT_PAGES = 10_000  # 40 MB of -wal at SQLite's 4 KB pages
WAL_KEPT_BYTES = 64 << 20  # a -wal file past this is cut back to it as it starts over


class KeptConnection(SQLiteConnection):
    """pynenc's connection wrapper (retries included), given back to its pool as its block ends."""

    def __init__(self, conn: sqlite3.Connection, pool: "Pool", path: str, file: object) -> None:
        super().__init__(conn)
        self.pool, self.path, self.file, self.closed = pool, path, file, False
        self.generation = pool.generation  # closed on its way back after a pool's close()

    def __exit__(self, exc_type: type | None, exc_val: Any, exc_tb: Any) -> None:
        try:
            super().__exit__(exc_type, exc_val, exc_tb)  # commit, or roll back on an error
        finally:
            self.pool.give(self)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._conn.close()
            self.pool.forget(self.file)


class Pool:
    """This process's kept connections, per database file, each taken for one block by one
    thread (a block inside another takes a second one, as pynenc's own code would)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.free: dict[str, list[KeptConnection]] = {}
        # Files whose journal mode this process has set, with how many of its connections
        # have each open: a file's identity (device, inode) names it only while one of them
        # keeps it open; a deleted file's inode is soon another file's (a fresh database).
        self.journaled: dict[object, int] = {}
        self.pid = os.getpid()
        self.generation = 0  # how many times close() was called
        # Files whose app chose pynenc's way (a connection per block): per file, as two apps in
        # one process may choose apart.
        self.unkept: set[str] = set()
        self.opened = self.taken = self.journal_set = 0  # what the tests and the bench read
        self.left_to_parent: list[object] = []  # a forked child's inherited connections
        self.joined = threading.local()  # per thread, {path: connection}: keyclaim.transaction

    def take(self, path: str) -> SQLiteConnection:
        if joined := vars(self.joined).get(path):
            return joined
        if path in self.unkept:
            raw = create_sqlite_connection(path)._conn  # every pragma, every time
            return KeptConnection(raw, self, path, None)  # closed as its block ends
        if self.pid != os.getpid():
            self.after_fork()
        file = _identity(path)
        stale: list[KeptConnection] = []
        with self.lock:
            self.taken += 1
            free = self.free.get(path, [])
            while free:
                conn = free.pop()
                if conn.file == file:
                    return conn
                stale.append(conn)  # the path names another file now
        for conn in stale:
            conn.close()
        return self.open(path)

    def open(self, path: str) -> KeptConnection:
        raw = sqlite3.connect(path, timeout=30.0, check_same_thread=False)
        file = _identity(path)
        with self.lock:
            journaled = file in self.journaled
            if file is not None:
                self.journaled[file] = self.journaled.get(file, 0) + 1
        if not journaled:
            raw.execute("PRAGMA journal_mode=WAL")  # stored in the file: once is enough
            with self.lock:
                self.journal_set += 1
        for pragma in ("synchronous=NORMAL", "cache_size=10000", "temp_store=MEMORY"):
            raw.execute(f"PRAGMA {pragma}")  # per connection, as pynenc sets them
        raw.execute("PRAGMA busy_timeout=30000")
        raw.execute(f"PRAGMA wal_autocheckpoint={CHECKPOINT_PAGES}")  # per connection
        raw.execute(f"PRAGMA journal_size_limit={WAL_KEPT_BYTES}")
        with self.lock:
            self.opened += 1
        return KeptConnection(raw, self, path, file)

    def give(self, conn: KeptConnection) -> None:
        if conn.closed or conn.pool is not self or self.pid != os.getpid():
            return  # closed in its block, or a parent's connection in a forked child
        if conn.in_transaction:  # a commit that failed: never hand on an open transaction
            conn.rollback()
        with self.lock:
            free = self.free.setdefault(conn.path, [])
            fresh = conn.generation == self.generation and conn.file is not None
            keep = fresh and len(free) < KEEP
            if keep:
                free.append(conn)
        if not keep:
            conn.close()

    def forget(self, file: object) -> None:
        """A connection to file closed: with the last one, its identity names it no more."""
        with self.lock:
            if file in self.journaled:
                self.journaled[file] -= 1
                if not self.journaled[file]:
                    del self.journaled[file]

    def close(self) -> None:
        """Close every free connection; one in use is closed as its block ends. Connections
        taken after this are opened again: closing is for a stop, not a switch."""
        with self.lock:
            free = [conn for conns in self.free.values() for conn in conns]
            self.free.clear()
            self.generation += 1
        for conn in free:
            conn.close()

    def after_fork(self) -> None:
        """In a forked child: the parent's connections stay open and unused (closing one here
        could checkpoint or unlock the parent's database), and the child opens its own."""
        self.left_to_parent.append(self.free)
        self.lock, self.free, self.pid = threading.Lock(), {}, os.getpid()


def _identity(path: str) -> object:
    """The file a path names now (device and inode), or None when there is none yet."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return (found.st_dev, found.st_ino)


POOL = Pool()
os.register_at_fork(after_in_child=POOL.after_fork)
atexit.register(POOL.close)


def kept_connection(sqlite_db_path: Any) -> SQLiteConnection:
    """What pynenc's `sqlite_conn(path)` becomes in the kept classes."""
    return POOL.take(str(sqlite_db_path))


def close() -> None:
    """Close this process's kept connections (a runner's stop calls it)."""
    POOL.close()


def _opens(code: CodeType, openers: set[str]) -> bool:
    """Whether this code, or code nested in it, calls one of openers by its global name."""
    return not openers.isdisjoint(code.co_names) or any(
        isinstance(const, CodeType) and _opens(const, openers) for const in code.co_consts
    )


def _copy(function: FunctionType, namespace: dict[str, Any]) -> FunctionType:
    """The same function (pynenc's code), looking its global names up in namespace."""
    copy = FunctionType(
        function.__code__, namespace, function.__name__, function.__defaults__, function.__closure__
    )
    copy.__kwdefaults__, copy.__qualname__ = function.__kwdefaults__, function.__qualname__
    copy.__doc__, copy.__module__ = function.__doc__, function.__module__
    copy.__dict__.update(function.__dict__)
    return copy


_MODULES: dict[str, tuple[dict[str, Any], set[str]]] = {}  # by name: (namespace, openers)
# pynenc's SQLite classes the library subclasses by name (below, and keyclaim.quiet).
SUBCLASSED = {"SQLiteOrchestrator", "SQLiteBroker", "SQLiteStateBackend", "SQLiteTrigger"}


def _module(name: str) -> tuple[dict[str, Any], set[str]] | None:
    """For one of pynenc's modules that opens connections: its namespace with the opener, and
    its functions and helper classes (SQLiteBlockingControl) that open, kept; and their names."""
    module = sys.modules[name]
    if not name.startswith("pynenc.") or OPENER not in vars(module):
        return None
    if vars(module)[OPENER] is not create_sqlite_connection:
        raise UntestedVersion(
            f"kept connections: {name}.{OPENER} is not pynenc's opener; tested with pynenc "
            + " or ".join(sorted(pynenc for pynenc, _ in versions.TESTED["sqlite"]))
        )
    if name not in _MODULES:
        namespace, openers = dict(vars(module)), {OPENER}
        own = {k: v for k, v in vars(module).items() if getattr(v, "__module__", "") == name}
        functions = {k: [v] for k, v in own.items() if isinstance(v, FunctionType)}
        helpers = {
            key: [f[0] for a in vars(cls).values() if (f := _function(a))]
            for key, cls in own.items()
            if isinstance(cls, type) and key not in SUBCLASSED
        }
        code = {**functions, **helpers}
        while True:  # what calls (or builds) what opens, opens too
            found = {k for k, fs in code.items() if any(_opens(f.__code__, openers) for f in fs)}
            if found <= openers:
                break
            openers |= found
        namespace[OPENER] = kept_connection
        _MODULES[name] = (namespace, openers)
        for key in openers & functions.keys():
            namespace[key] = _copy(own[key], namespace)
        for key in openers & helpers.keys():
            namespace[key] = relinked(own[key], "Kept")
    return _MODULES[name]


def _function(attribute: Any) -> tuple[FunctionType, Callable[[FunctionType], Any]] | None:
    """The function behind a class attribute, and how to wrap a copy of it the same way."""
    found, wrap = attribute, (lambda f: f)
    if isinstance(attribute, (staticmethod, classmethod)):
        found, wrap = attribute.__func__, type(attribute)
    elif isinstance(attribute, cached_property):
        found, wrap = attribute.func, cached_property
    elif isinstance(attribute, property) and attribute.fget and not attribute.fset:
        found, wrap = attribute.fget, lambda f: property(f, doc=attribute.__doc__)
    return (found, wrap) if isinstance(found, FunctionType) else None


def _pynencs_openers(cls: type) -> Iterator[tuple[str, type, FunctionType, Any]]:
    """Each method of cls from pynenc's SQLite modules that still opens a connection pynenc's
    way: its name, the class it comes from, its function, and how that function is wrapped."""
    for name in dir(cls):
        owner = next(base for base in cls.__mro__ if name in vars(base))
        found = _function(vars(owner)[name])
        if found is None or (module := _module(found[0].__module__)) is None:
            continue
        relinked_already = found[0].__globals__.get(OPENER) is kept_connection
        if _opens(found[0].__code__, module[1]) and not relinked_already:
            yield name, owner, *found


def relink[C: type](cls: C) -> C:
    """Give cls, a subclass of one of pynenc's SQLite classes, copies of every method it
    inherits from pynenc's SQLite modules that opens a connection, opening it here instead."""
    kept = 0
    for name, owner, function, wrap in list(_pynencs_openers(cls)):
        if owner is cls:
            continue  # cls's own
        namespace, _ = _module(function.__module__)  # type: ignore[misc]
        copy = wrap(_copy(function, namespace))
        setattr(cls, name, copy)
        if isinstance(copy, cached_property):
            copy.__set_name__(cls, name)
        kept += 1
    if not kept:
        raise UntestedVersion(f"kept connections: {cls.__name__} opens no connection to keep")
    return cls


def relinked(base: type, prefix: str = "Relinked") -> type:
    """A subclass of base (named apart: pynenc finds classes by name), relinked."""
    doc = f"pynenc's {base.__name__}, its methods opening kept connections."
    return relink(type(prefix + base.__name__, (base,), {"__module__": __name__, "__doc__": doc}))


def opens_own_connections(cls: type) -> list[str]:
    """The methods of cls that still open connections pynenc's way (for the tests: none)."""
    return [name for name, *_ in _pynencs_openers(cls)]


class _Tested:
    """Refuses, as pynenc builds it, a pynenc the kept classes were not tested with."""

    def __init__(self, app: Any) -> None:
        versions.check("kept connections", "sqlite")
        super().__init__(app)  # type: ignore[call-arg]


# Each base is relinked as the module is imported (a class of its own, so that a method the kept
# class overrides still reaches the relinked copy): a type checker cannot know it, hence ignores.
class KeptSQLiteOrchestrator(_Tested, relinked(SQLiteOrchestrator)):  # type: ignore[misc]
    """pynenc's SQLite orchestrator, with kept connections."""

    # Selected by its name alone, this one keeps them; the claim's, derived from it, only where
    # keep_connections selected them (KEEP_KEY): else it opens one per block, as pynenc does.
    KEEPS_BY_DEFAULT = True

    def __init__(self, app: Any) -> None:
        super().__init__(app)
        keeps = bool((app.config_values or {}).get(KEEP_KEY, self.KEEPS_BY_DEFAULT))
        (POOL.unkept.discard if keeps else POOL.unkept.add)(str(self.sqlite_db_path))


class KeptSQLiteBroker(_Tested, relinked(SQLiteBroker)):  # type: ignore[misc]
    """pynenc's SQLite broker, with kept connections."""


class KeptSQLiteStateBackend(_Tested, relinked(SQLiteStateBackend)):  # type: ignore[misc]
    """pynenc's SQLite state backend, with kept connections."""


class KeptSQLiteTrigger(_Tested, relinked(SQLiteTrigger)):  # type: ignore[misc]
    """pynenc's SQLite trigger, with kept connections (keyclaim.quiet adds the skipped lookups)."""


# pynenc's client data store module, with `sqlite3.connect` taking a kept connection.
_KEPT_SQLITE3 = {
    **vars(sqlite_client_data_store),
    "sqlite3": SimpleNamespace(connect=kept_connection),
}


class KeptSQLiteClientDataStore(_Tested, SQLiteClientDataStore):
    """pynenc's SQLite client data store (an argument or an outcome of 1 KB or more is kept
    there), its writes and reads on kept connections. pynenc's opens its own with
    `sqlite3.connect`: inside a step of the claim (keyclaim.transaction), which holds the
    database's write lock, that write waited on the step itself until its 5 s timeout, at every
    try, and the outcome was never stored. Its own code, `sqlite3.connect` taking a kept
    connection, which joins the step. The upstream change that retires it: the client data store
    opens its connections through `sqlite_conn`, as the other SQLite classes do."""

    _store = _copy(vars(SQLiteClientDataStore)["_store"], _KEPT_SQLITE3)
    _retrieve = _copy(vars(SQLiteClientDataStore)["_retrieve"], _KEPT_SQLITE3)
