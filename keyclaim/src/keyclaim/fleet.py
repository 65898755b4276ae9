"""The fleet: every worker on one store must run the claim with the same settings.

Each worker records its settings in the app's own store as it starts (`join_fleet`); a worker
or producer whose settings differ from a live one's is refused in one line naming both
(`fleet_problem`). Who joins, when, and what counts as live: keyclaim/README.md, "The fleet".
Written against pynenc 0.3.1 and 0.4.0, which record no runner's configuration. The upstream
change that retires it: the runner registry keeps each runner's concurrency settings, and a
runner or producer whose settings differ from a live runner's is refused at start.
"""

import atexit
import json
import os
import socket
import sqlite3
from contextlib import closing, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keyclaim import config, limits, versions
from keyclaim.errors import Refused

if TYPE_CHECKING:
    from pynenc import Pynenc

FLEET_WINDOW = 75.0  # seconds: pynenc's heartbeat within it, on the reader's wall clock
TABLE = "claim_fleet"  # SQLite: under the app's table prefix; Redis: a hash under its key prefix
MEMBER = "_keyclaim_fleet_member"  # on the app: this process's record, once joined
SCHEMA = "CREATE TABLE IF NOT EXISTS {table} (runner_id TEXT PRIMARY KEY, record TEXT NOT NULL)"


@dataclass(frozen=True)
class Member:
    """A worker on the store, as it recorded itself when it started."""

    runner_id: str
    settings: dict[str, str]
    pid: int
    host: str
    about: dict[str, Any] = field(default_factory=dict, compare=False)  # its runner, versions

    def __str__(self) -> str:
        where = f"pid {self.pid} on {self.host}: {_shown(self.settings)}"
        return f"runner {self.runner_id[:8]} ({where})"


def fleet_settings(app: "Pynenc") -> dict[str, str]:
    """What every worker and producer on one store must agree on: the claim, its windows, and
    the limits its tasks declare (keyclaim.limit)."""
    if not config.is_on(app):
        return {"atomic claim": "off"}
    dead_after, beat_every, longest = config.windows(app)
    found = {
        "atomic claim": "on",
        "dead after": f"{dead_after:g}s",
        "beat every": f"{beat_every:g}s",
        "longest call": "?" if longest is None else f"{longest:g}s",
    }
    # keyclaim.limit: N per key and rates, for this app's tasks (a process may build others)
    if declared := limits.declared(task.task_id.key for task in app._tasks.values()):
        found["limits"] = "; ".join(f"{task} {limits.describe(task)}" for task in declared)
    return found


# What a producer decides with as it registers a call: whether it parks it, and in how many
# slots. The windows are the workers' own (a producer recovers nothing).
PRODUCER_SETTINGS = ("atomic claim", "limits")


def _shown(settings: dict[str, str]) -> str:
    return ", ".join(f"{name} {value}" for name, value in settings.items())


class FleetStore:
    """The fleet's records in the app's own store, whether or not this process runs the claim."""

    def __init__(self, app: "Pynenc") -> None:
        self.app, self.orchestrator = app, app.orchestrator
        self.redis = hasattr(self.orchestrator, "client")

    def _sql(self, statement: str, *args: str, create: bool = True) -> list[tuple[str, str]]:
        """SQLite: one statement on the fleet's table ("{table}" in it), committed; without
        create, a read that writes nothing (no table: no rows)."""
        table = f"{self.orchestrator.tables.table_prefix}_{TABLE}"
        with closing(sqlite3.connect(self.orchestrator.sqlite_db_path, timeout=30.0)) as conn, conn:
            if create:
                conn.execute(SCHEMA.format(table=table))
            elif not conn.execute(
                "SELECT 1 FROM sqlite_master WHERE name = ?", (table,)
            ).fetchone():
                return []
            return conn.execute(statement.format(table=table), args).fetchall()

    def _hash(self) -> str:
        return self.orchestrator.key.prefix + TABLE

    def records(self) -> dict[str, str]:
        if not self.redis:
            return dict(self._sql("SELECT runner_id, record FROM {table}", create=False))
        raw = self.orchestrator.client.hgetall(self._hash())
        return {k.decode(): v.decode() for k, v in raw.items()}

    def write(self, runner_id: str, record: str) -> None:
        if self.redis:
            self.orchestrator.client.hset(self._hash(), runner_id, record)
        else:
            self._sql("INSERT OR REPLACE INTO {table} VALUES (?, ?)", runner_id, record)

    def remove(self, runner_id: str) -> None:
        if self.redis:
            self.orchestrator.client.hdel(self._hash(), runner_id)
        else:
            self._sql("DELETE FROM {table} WHERE runner_id = ?", runner_id)


def beating(app: "Pynenc", within: float) -> list[Any]:
    """pynenc's own list of the runners that beat in the last `within` seconds (the claim's own
    list leaves out runners that do not beat its way: a worker without the claim)."""
    orchestrator = app.orchestrator
    stock = getattr(orchestrator, "stock_active_runners", None)
    return list(stock(within) if stock else orchestrator._get_active_runners(within, None))


def alive_here(pid: int) -> bool:
    """Whether the process still runs pynenc (on Linux; elsewhere, whether it exists): its
    command line says so, or its name (a runner forked from a process that had loaded its app
    names itself so)."""
    if Path("/proc").is_dir():
        try:
            return any(
                b"pynenc" in Path(f"/proc/{pid}/{f}").read_bytes() for f in ("cmdline", "comm")
            )
        except OSError:
            return False
    try:
        with suppress(PermissionError):  # it exists, under another user
            os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def fleet(app: "Pynenc", besides: str | None = None) -> list[Member]:
    """The live workers on the app's store (but `besides`), as they recorded themselves: on
    this host, a pynenc process still there (beating yet or not); elsewhere, a recent beat."""
    store, here = FleetStore(app), socket.gethostname()
    records, members = store.records(), []
    elsewhere = any(json.loads(r)["host"] != here for r in records.values())
    # A start-up check: a beat within the fleet window, generous enough for any skew under it.
    beats = {r.runner_id for r in beating(app, FLEET_WINDOW)} if elsewhere else set()
    for runner_id, raw in records.items():
        record = json.loads(raw)
        member = Member(
            runner_id,
            record["settings"],
            int(record["pid"]),
            record["host"],
            record.get("about", {}),
        )
        if runner_id == besides:
            continue
        if alive_here(member.pid) if member.host == here else runner_id in beats:
            members.append(member)
    return members


def fleet_problem(
    app: "Pynenc", besides: str | None = None, only: tuple[str, ...] | None = None
) -> str | None:
    """Why this process must not join the workers live on its store, in one line, naming both
    sides; None when every one of them runs with its settings (only: with these of them)."""
    mine = fleet_settings(app)

    def compared(settings: dict[str, str]) -> dict[str, str]:
        return settings if only is None else {k: v for k, v in settings.items() if k in only}

    for member in fleet(app, besides):
        if compared(member.settings) != compared(mine):
            return (
                f"this process runs with {_shown(mine)}, but a live worker on the same store "
                f"runs with other settings: {member}. Every worker and producer on one store "
                "must agree: give them all the same settings, or stop those workers first"
            )
    return None


def prune(app: "Pynenc") -> None:
    """Remove the records of workers no longer live (a SIGKILL skips the removal at exit): the
    fleet check already passes them by, and a live one writes its own again with each beat."""
    store = FleetStore(app)
    for runner_id in store.records().keys() - {m.runner_id for m in fleet(app)}:
        store.remove(runner_id)


def joined(app: "Pynenc") -> str | None:
    """The runner this process joined the fleet as; None before it has."""
    member = getattr(app, MEMBER, None)
    return None if member is None else str(member[0])


def join_fleet(app: "Pynenc", runner_id: str) -> None:
    """A worker's start, once per runner: raise Refused (the one line) on a fleet it does not
    agree with; else record its settings, for the next ones to check, until this process ends."""
    if joined(app) == runner_id:
        return
    if why := fleet_problem(app, besides=runner_id):
        raise Refused(why)
    store, pid = FleetStore(app), os.getpid()
    record = {"settings": fleet_settings(app), "pid": pid, "host": socket.gethostname()}
    runner = app.runner  # shown by `python -m keyclaim top`, compared by no one
    record["about"] = {
        "runner": type(runner).__name__,
        "threads": getattr(runner, "max_threads", None),
        "pynenc": versions.version("pynenc"),
        "keyclaim": versions.version("pynenc-keyclaim"),
    }
    store.write(runner_id, json.dumps(record))
    setattr(app, MEMBER, (runner_id, json.dumps(record)))  # written again with each beat

    def leave() -> None:
        if os.getpid() == pid:  # not in a forked child (ProcessRunner), which inherits this
            with suppress(Exception):  # the store may be gone first: then so is the record
                store.remove(runner_id)

    atexit.register(leave)


def beat(app: "Pynenc", runner_ids: list[str]) -> None:
    """With a runner's beat: its record again (a store that lost its data forgets it)."""
    if (member := getattr(app, MEMBER, None)) and member[0] in runner_ids:
        FleetStore(app).write(*member)
