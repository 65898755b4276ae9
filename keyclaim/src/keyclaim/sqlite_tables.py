"""The claim on SQLite: its tables, and the reads and writes its steps make in a transaction.

The base of keyclaim.sqlite_claim's orchestrator, whose steps each open one `BEGIN IMMEDIATE`
transaction and make these inside it. Its tables sit under the app's pynenc table prefix, so
pynenc's purge clears them too; its queue writes are pynenc's SQLite broker's own. Written
against pynenc 0.3.1 and 0.4.0 (their SQLite tables); retired with keyclaim.sqlite_claim.
"""

import sqlite3
import time
from contextlib import closing, suppress
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pynenc.invocation.status import InvocationStatus, InvocationStatusRecord

from keyclaim import connections, overrides, transaction
from keyclaim.clock import BOOT, first_token, host_clock
from keyclaim.decision import Holder, rate_free_at
from keyclaim.keys import fence_key
from keyclaim.limits import Limit
from keyclaim.orchestrator import AtomicClaim

if TYPE_CHECKING:
    from pynenc.invocation.dist_invocation import DistributedInvocation
    from pynenc.util.sqlite_utils import SQLiteConnection

S = InvocationStatus
# The longest a queued call is passed over for a hand-over's longer line (`_line_first`).
FAIR_WAIT = 0.25
# The claim's tables, under pynenc's table prefix {p}, which its purge clears: a key's holders,
# one per slot (keyclaim.limit: up to N), and its line; its rate's admissions, and the holders
# waiting for their rate window to free (keyclaim/README.md, "Up to N per key"); each busy
# slot's last fencing token, and under fence_key '' the floor an idle slot's counter was folded
# into; each claim's token while its call is not final (with when it was made: the host's
# clock, in its boot); counts; beats; an operator's overrides of a key's limit
# (keyclaim.overrides).
SCHEMA = """
CREATE TABLE IF NOT EXISTS {p}_key_slots (line_key TEXT NOT NULL, slot INTEGER NOT NULL,
    invocation_id TEXT NOT NULL UNIQUE, PRIMARY KEY (line_key, slot));
CREATE TABLE IF NOT EXISTS {p}_key_admitted
    (line_key TEXT NOT NULL, boot TEXT NOT NULL, at REAL NOT NULL, invocation_id TEXT);
CREATE TABLE IF NOT EXISTS {p}_key_dues
    (invocation_id TEXT PRIMARY KEY, line_key TEXT NOT NULL, boot TEXT NOT NULL, due REAL NOT NULL);
CREATE TABLE IF NOT EXISTS {p}_key_lines (seq INTEGER PRIMARY KEY AUTOINCREMENT,
    line_key TEXT NOT NULL, invocation_id TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS {p}_fence_counters (fence_key TEXT PRIMARY KEY, token INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS {p}_claimed
    (invocation_id TEXT PRIMARY KEY, token INTEGER NOT NULL, boot TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS {p}_claim_stats (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS {p}_key_limits
    (line_key TEXT PRIMARY KEY, slots INTEGER, rate INTEGER, per REAL);
CREATE TABLE IF NOT EXISTS {p}_claim_beats
    (runner_id TEXT PRIMARY KEY, boot TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS {p}_key_lines_order ON {p}_key_lines(line_key, seq);
CREATE INDEX IF NOT EXISTS {p}_key_admitted_at ON {p}_key_admitted(line_key, at);
"""


class SQLiteClaimTables(AtomicClaim, connections.KeptSQLiteOrchestrator):
    """The claim's tables in pynenc's SQLite database, and the writes a step makes in them."""

    def _init_tables(self) -> None:
        super()._init_tables()
        p = self.tables.table_prefix
        self.holders, self.lines = f"{p}_key_slots", f"{p}_key_lines"
        self.admitted, self.dues = f"{p}_key_admitted", f"{p}_key_dues"
        self.fence_counters, self.claimed = f"{p}_fence_counters", f"{p}_claimed"
        self.claim_stats, self.beats = f"{p}_claim_stats", f"{p}_claim_beats"
        self.key_limits = f"{p}_key_limits"
        with self._connect() as conn:
            for statement in filter(str.strip, SCHEMA.format(p=p).split(";")):
                conn.execute(statement)
            admitted = conn.execute(f"PRAGMA table_info({self.admitted})").fetchall()
            if "invocation_id" not in {row[1] for row in admitted}:  # an older keyclaim's file
                with suppress(sqlite3.OperationalError):  # "duplicate column": another's, first
                    conn.execute(f"ALTER TABLE {self.admitted} ADD COLUMN invocation_id TEXT")
            queue = self.app.broker.tables.QUEUE
            found = {row[1] for row in conn.execute(f"PRAGMA table_info({queue})").fetchall()}
        # pynenc 0.4.0's queue has a queue name and a priority per row; 0.3.1's does not.
        self._queue_by_name = "queue_name" in found

    def _connect(self) -> "SQLiteConnection":
        """A connection for one step, committed (or rolled back) as the block ends: kept, or
        opened for the step, without pynenc's journal-mode pragma (keyclaim.connections).

        pynenc builds its broker and state backend on first use, and writes as it builds them
        (0.4.0: the app's info): inside a step, that write would wait on the step's own write
        lock for SQLite's 30 s busy timeout, so both are built before the step begins."""
        _ = (self.app.broker, self.app.state_backend)  # built here, outside any step
        return connections.POOL.take(self.sqlite_db_path)

    def _begin(self, conn: Any) -> None:
        """Take the database's write lock (transaction.begin): every other step waits here until
        we commit (held already inside transaction.one)."""
        transaction.step(conn)

    def _start_in_step(self, invocation_id: str, runner_ctx: Any) -> None:
        """A call a hand-over's thread took, which it runs next: its RUNNING in the step that
        took it (one transaction fewer on the way to the next call), pynenc's write of it as
        the call runs then skipped once the step is committed (a step undone leaves it to the
        run). Not where a step is no transaction (pynenc's connections)."""
        if not transaction.keeps_all(self.app):
            return
        if admitted := self._admitted.pop(invocation_id, None):
            self.restamp_in_store(invocation_id, admitted)
        super(AtomicClaim, self).set_invocation_status(invocation_id, S.RUNNING, runner_ctx)
        transaction.after_commit(self.sqlite_db_path, lambda: self._started.add(invocation_id))

    def _hold(self, conn: Any, line: str, slot: int, invocation_id: str) -> None:
        conn.execute(f"INSERT INTO {self.holders} VALUES (?, ?, ?)", (line, slot, invocation_id))

    def _park(self, conn: Any, line: str, invocation_id: str) -> None:
        """At the end of its key's line (once: it may already wait there)."""
        conn.execute(
            f"INSERT OR IGNORE INTO {self.lines} (line_key, invocation_id) VALUES (?, ?)",
            (line, invocation_id),
        )

    def _beat(self, conn: Any, runner_id: str) -> float | None:
        """The runner's last heartbeat on this host's clock; None if none in this boot."""
        row = conn.execute(
            f"SELECT at FROM {self.beats} WHERE runner_id = ? AND boot = ?", (runner_id, BOOT)
        ).fetchone()
        return None if row is None else float(row[0])

    def _pending_too_long(self, conn: Any, window: float, only: str | None = None) -> list[str]:
        """PENDING since a claim of ours more than window seconds ago on this host's clock (or in
        an earlier boot), else by pynenc's own timestamp; only: this invocation alone."""
        rows = conn.execute(
            f"SELECT i.invocation_id, i.status_timestamp, c.boot, c.at "
            f"FROM {self.tables.INVOCATIONS} i LEFT JOIN {self.claimed} c "
            "ON c.invocation_id = i.invocation_id WHERE i.status = ? "
            "AND (? IS NULL OR i.invocation_id = ?)",
            (S.PENDING.value, only, only),
        ).fetchall()
        since, wall_since = host_clock() - window, time.time() - window
        return [
            invocation_id
            for invocation_id, stamp, boot, at in rows
            if (stamp < wall_since if boot is None else boot != BOOT or at < since)
        ]

    def _queued(self, conn: Any, invocation_id: str) -> bool:
        queue = self.app.broker.tables.QUEUE
        found = conn.execute(f"SELECT 1 FROM {queue} WHERE invocation_id = ?", (invocation_id,))
        return found.fetchone() is not None

    def _release(self, conn: Any, invocation_id: str) -> str | None:
        """A final invocation lets go of its claim's record, and of its slot (the head of its
        line takes it, and is returned; none: the idle slot's counter is folded into the floor),
        or of its place in a line. Below a lowered limit, it hands the slot to no one."""
        for table in (self.dues, self.claimed):
            conn.execute(f"DELETE FROM {table} WHERE invocation_id = ?", (invocation_id,))
        row = conn.execute(
            f"SELECT line_key, slot FROM {self.holders} WHERE invocation_id = ?", (invocation_id,)
        ).fetchone()
        if row is None:
            conn.execute(f"DELETE FROM {self.lines} WHERE invocation_id = ?", (invocation_id,))
            return None
        line, slot = row
        head = conn.execute(
            f"SELECT seq, invocation_id FROM {self.lines} WHERE line_key = ? ORDER BY seq LIMIT 1",
            (line,),
        ).fetchone()
        if head is None or not overrides.sqlite_has_room(self, conn, line, head[1]):
            conn.execute(f"DELETE FROM {self.holders} WHERE invocation_id = ?", (invocation_id,))
            fence = fence_key(line, slot)
            conn.execute(
                f"INSERT INTO {self.fence_counters} SELECT '', token FROM {self.fence_counters} "
                "WHERE fence_key = ? ON CONFLICT(fence_key) DO UPDATE "
                "SET token = MAX(token, excluded.token)",
                (fence,),
            )
            conn.execute(f"DELETE FROM {self.fence_counters} WHERE fence_key = ?", (fence,))
            return None
        conn.execute(f"DELETE FROM {self.lines} WHERE seq = ?", (head[0],))
        conn.execute(
            f"UPDATE {self.holders} SET invocation_id = ? WHERE line_key = ? AND slot = ?",
            (head[1], line, slot),
        )
        self._queue(conn, head[1])
        return str(head[1])

    def _line_first(self, conn: Any, handed: str, where: str, given: list, order: str) -> bool:
        """Whether a hand-over's thread takes the call it handed its key to before the queue's
        oldest: when more calls wait in that key's line than on the whole queue (the key, whose
        calls run one after another, is what the rest waits on), unless the oldest has waited
        FAIR_WAIT already, or comes first by its priority (pynenc 0.4.0)."""
        queue, by_name = self.app.broker.tables.QUEUE, self._queue_by_name
        oldest = conn.execute(
            f"SELECT invocation_id, (julianday('now') - created_at) * 86400"
            f"{', priority' if by_name else ''} FROM {queue} {where} ORDER BY {order} LIMIT 1",
            given,
        ).fetchone()
        if oldest is None or oldest[0] == handed or oldest[1] >= FAIR_WAIT:
            return False
        # Off the queue already (another worker took it), or behind the oldest by its priority.
        behind, asked = ("priority < ?", [oldest[2]]) if by_name else ("0", [])
        if conn.execute(
            f"SELECT {behind} FROM {queue} WHERE invocation_id = ?", [*asked, handed]
        ).fetchone() != (0,):
            return False
        bound = 16  # each counted up to a bound, raised until one falls short: the shorter's rows
        while True:
            waiting, queued = conn.execute(
                f"SELECT (SELECT COUNT(*) FROM (SELECT 1 FROM {self.lines} WHERE line_key = "
                f"(SELECT line_key FROM {self.holders} WHERE invocation_id = ?) LIMIT ?)), "
                f"(SELECT COUNT(*) FROM (SELECT 1 FROM {queue} {where} LIMIT ?))",
                [handed, bound, *given, bound],
            ).fetchone()
            if min(waiting, queued) < bound:
                return bool(waiting > queued)
            bound *= 8

    def _holders(self, conn: Any, line: str) -> list[Holder]:
        """The key's holders, one per slot taken; one that ended without letting go (a process
        without the claim finished it) hands its slot on first."""
        rows = conn.execute(
            f"SELECT invocation_id, slot FROM {self.holders} WHERE line_key = ? ORDER BY slot",
            (line,),
        ).fetchall()
        holders = []
        for invocation_id, slot in rows:
            record = self._status(conn, invocation_id)
            if record is None or record.status.is_final():
                self._release(conn, invocation_id)
                return self._holders(conn, line)
            beat = self._beat(conn, record.runner_id or "")
            holders.append(Holder(invocation_id, record, beat, int(slot)))
        return holders

    def _rate_free_at(
        self,
        conn: Any,
        line: str,
        limit: Limit,
        now: float,
        holders: list[Holder],
        alive_since: float,
    ) -> float | None:
        """None when the key's rate admits a call now; else when its window frees (this host's
        clock; keyclaim.decision.rate_free_at). Admissions of an earlier boot are forgotten (see
        keyclaim/README.md)."""
        if limit.rate is None:
            return None
        rows = conn.execute(
            f"SELECT invocation_id, at FROM {self.admitted} "
            "WHERE line_key = ? AND boot = ? AND at > ?",
            (line, BOOT, now - limit.window),
        ).fetchall()
        return rate_free_at(rows, holders, alive_since, limit.rate, limit.window, now)

    def _admit(self, conn: Any, invocation_id: str, line: str, limit: Limit, now: float) -> None:
        """A call admitted: no longer due, and counted in its key's rate window (pruned)."""
        conn.execute(f"DELETE FROM {self.dues} WHERE invocation_id = ?", (invocation_id,))
        if limit.rate is None:
            return
        conn.execute(
            f"DELETE FROM {self.admitted} WHERE line_key = ? AND (boot != ? OR at <= ?)",
            (line, BOOT, now - limit.window),
        )
        self._count_admission(conn, line, invocation_id, now)

    def _count_admission(self, conn: Any, line: str, invocation_id: str, at: float) -> None:
        """The call counted in its key's rate window from `at` (this host's clock)."""
        conn.execute(
            f"INSERT INTO {self.admitted} (line_key, boot, at, invocation_id) VALUES (?, ?, ?, ?)",
            (line, BOOT, at, invocation_id),
        )

    def _status(self, conn: Any, invocation_id: str) -> InvocationStatusRecord | None:
        row = conn.execute(
            f"SELECT status, status_runner_id, status_timestamp FROM {self.tables.INVOCATIONS} "
            "WHERE invocation_id = ?",
            (invocation_id,),
        ).fetchone()
        if row is None:
            return None
        return InvocationStatusRecord(S(row[0]), row[1], datetime.fromtimestamp(row[2], tz=UTC))

    def _write_status(self, conn: Any, invocation_id: str, record: InvocationStatusRecord) -> None:
        conn.execute(
            f"UPDATE {self.tables.INVOCATIONS} SET status = ?, status_runner_id = ?, "
            "status_timestamp = ? WHERE invocation_id = ?",
            (record.status.value, record.runner_id, record.timestamp.timestamp(), invocation_id),
        )

    def _index(self, conn: Any, invocation: "DistributedInvocation") -> None:
        for arg, value in invocation.call.serialized_arguments.items():
            conn.execute(
                f"INSERT OR REPLACE INTO {self.tables.INVOCATION_ARGS} "
                "(invocation_id, arg_key, arg_value) VALUES (?, ?, ?)",
                (invocation.invocation_id, arg, value),
            )

    def _queue(self, conn: Any, invocation_id: str) -> None:
        """pynenc's SQLite broker's own insert, inside our transaction."""
        queue = self.app.broker.tables.QUEUE
        if self._queue_by_name:
            task = self.app.state_backend.get_invocation(invocation_id).task
            conn.execute(
                f"INSERT INTO {queue} (invocation_id, queue_name, priority, created_at) "
                "VALUES (?, ?, ?, julianday('now'))",
                (invocation_id, task.broker_queue, task.broker_priority),
            )
        else:
            conn.execute(
                f"INSERT INTO {queue} (invocation_id, created_at) VALUES (?, julianday('now'))",
                (invocation_id,),
            )

    def _issue_token(self, conn: Any, invocation_id: str, key: str) -> int:
        """The slot's next fencing token, written with the claim and when it was made. An idle
        slot's first is the time (on SQLite, this process's wall clock, used for nothing else),
        but above the floor: a clock set back still issues none older than before."""
        (issued,) = conn.execute(
            f"INSERT INTO {self.fence_counters} VALUES (?, MAX(?, 1 + COALESCE((SELECT token "
            f"FROM {self.fence_counters} WHERE fence_key = ''), 0))) "
            "ON CONFLICT(fence_key) DO UPDATE SET token = token + 1 RETURNING token",
            (key, first_token(time.time())),
        ).fetchone()
        conn.execute(
            f"INSERT OR REPLACE INTO {self.claimed} VALUES (?, ?, ?, ?)",
            (invocation_id, issued, BOOT, host_clock()),
        )
        return int(issued)

    def _count(self, conn: Any, name: str, by: int = 1) -> None:
        conn.execute(
            f"INSERT INTO {self.claim_stats} VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, by),
        )

    def view_keys(self) -> dict[str, Any]:
        """The keys that hold or wait, for `python -m keyclaim top`: three reads by the claim's
        tables of busy keys (holders, lines) in one snapshot of a connection of its own that
        refuses writes, and what they cost (statements, and SQLite's VM steps: rows visited)."""
        reads = {"queries": 0, "steps": 0}

        def step() -> int:
            reads["steps"] += 1
            return 0

        busy = f"SELECT line_key FROM {self.holders} UNION SELECT line_key FROM {self.lines}"
        with closing(sqlite3.connect(self.sqlite_db_path, timeout=30.0)) as conn:
            conn.execute("PRAGMA query_only = ON")
            conn.set_trace_callback(lambda _: reads.update(queries=reads["queries"] + 1))
            conn.set_progress_handler(step, 1)
            conn.execute("BEGIN")
            holders = conn.execute(
                "SELECT h.line_key, h.slot, h.invocation_id, i.task_id_key, i.status, "
                f"i.status_runner_id, c.token, c.boot, c.at, d.boot, d.due FROM {self.holders} h "
                f"LEFT JOIN {self.tables.INVOCATIONS} i ON i.invocation_id = h.invocation_id "
                f"LEFT JOIN {self.claimed} c ON c.invocation_id = h.invocation_id "
                f"LEFT JOIN {self.dues} d ON d.invocation_id = h.invocation_id "
                "ORDER BY h.line_key, h.slot"
            ).fetchall()
            lines = conn.execute(
                f"SELECT l.line_key, COUNT(*), (SELECT status_timestamp FROM "
                f"{self.tables.INVOCATIONS} WHERE invocation_id = (SELECT invocation_id FROM "
                f"{self.lines} WHERE line_key = l.line_key ORDER BY seq LIMIT 1)) "
                f"FROM {self.lines} l GROUP BY l.line_key"
            ).fetchall()
            admitted = conn.execute(
                f"SELECT line_key, at FROM {self.admitted} WHERE line_key IN ({busy}) AND boot = ?",
                (BOOT,),
            ).fetchall()
            conn.rollback()
        now, wall = host_clock(), time.time()
        keys: dict[str, dict[str, Any]] = {}

        def key(line: str) -> dict[str, Any]:
            return keys.setdefault(
                line, {"holders": [], "waiting": 0, "oldest_wait": None, "admitted": []}
            )

        for line, slot, inv_id, task, status, runner, token, boot, at, due_boot, due in holders:
            key(line)["holders"].append(
                {
                    "slot": slot,
                    "invocation": inv_id,
                    "task": task,
                    "status": status,
                    "runner": runner,
                    "token": token,
                    "held_for": None if boot != BOOT else round(now - at, 3),
                    "due_in": None if due_boot != BOOT else round(max(0.0, due - now), 3),
                }
            )
        for line, count, since in lines:
            key(line).update(waiting=count, oldest_wait=since and round(wall - since, 3))
        for line, at in admitted:
            key(line)["admitted"].append(now - at)
        return {"keys": keys, "reads": reads}
