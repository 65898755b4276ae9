"""The claim on SQLite: every step is one `BEGIN IMMEDIATE` transaction (one writer at a time).

Selected by class name (orchestrator_cls="AtomicClaimSQLiteOrchestrator"): keyclaim.install.
Written and tested against pynenc 0.3.1 and 0.4.0 (keyclaim.versions). Its tables sit under the
app's pynenc table prefix, so pynenc's purge clears them too. SQLite has no clock of its own,
and its workers share one host: liveness is read on the host's clock since boot
(keyclaim.clock), a key's first token on this process's wall clock (the one thing it is used
for).

The upstream change that retires it: the same steps in `SQLiteOrchestrator` itself, with the
hand-over inside `_atomic_status_transition` (the repo's docs/upstream.md).
"""

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pynenc.invocation.status import (
    InvocationStatus,
    InvocationStatusRecord,
    status_record_transition,
)

from keyclaim import connections, limits
from keyclaim.clock import BOOT, first_token, host_clock
from keyclaim.decision import UNMOVING, Decision, Holder, Verdict, free_slot, recovery
from keyclaim.keys import fence_key, key_arguments, line_key, waits_in_line
from keyclaim.limits import Limit
from keyclaim.orchestrator import AtomicClaim

if TYPE_CHECKING:
    from pynenc.identifiers.invocation_id import InvocationId
    from pynenc.invocation.dist_invocation import DistributedInvocation

S = InvocationStatus


class AtomicClaimSQLiteOrchestrator(AtomicClaim, connections.KeptSQLiteOrchestrator):
    """SQLite: every step is one BEGIN IMMEDIATE transaction (one writer at a time)."""

    BACKEND = "sqlite"
    KEEPS_BY_DEFAULT = False  # kept connections are keep_connections' choice, not the claim's

    def _init_tables(self) -> None:
        super()._init_tables()
        p = self.tables.table_prefix  # pynenc's purge clears every table under it
        # A key's holders, one per slot (keyclaim.limit: up to N), its rate's admissions, and
        # the holders waiting for their rate window to free (keyclaim/README.md, "N per key").
        self.holders, self.lines = f"{p}_key_slots", f"{p}_key_lines"
        self.admitted, self.dues = f"{p}_key_admitted", f"{p}_key_dues"
        self.fence_counters, self.claimed = f"{p}_fence_counters", f"{p}_claimed"
        self.claim_stats, self.beats = f"{p}_claim_stats", f"{p}_claim_beats"
        with self._connect() as conn:
            for table, columns in (
                (
                    self.holders,
                    "line_key TEXT NOT NULL, slot INTEGER NOT NULL, "
                    "invocation_id TEXT NOT NULL UNIQUE, PRIMARY KEY (line_key, slot)",
                ),
                (self.admitted, "line_key TEXT NOT NULL, boot TEXT NOT NULL, at REAL NOT NULL"),
                (
                    self.dues,
                    "invocation_id TEXT PRIMARY KEY, line_key TEXT NOT NULL, boot TEXT NOT NULL, "
                    "due REAL NOT NULL",
                ),
                (
                    self.lines,
                    "seq INTEGER PRIMARY KEY AUTOINCREMENT, line_key TEXT NOT NULL, "
                    "invocation_id TEXT NOT NULL UNIQUE",
                ),
                (self.fence_counters, "fence_key TEXT PRIMARY KEY, token INTEGER NOT NULL"),
                # Each claim: its token, and when it was made (the host's clock, in its boot).
                (
                    self.claimed,
                    "invocation_id TEXT PRIMARY KEY, token INTEGER NOT NULL, boot TEXT NOT NULL, "
                    "at REAL NOT NULL",
                ),
                (self.claim_stats, "name TEXT PRIMARY KEY, value INTEGER NOT NULL"),
                (self.beats, "runner_id TEXT PRIMARY KEY, boot TEXT NOT NULL, at REAL NOT NULL"),
            ):
                conn.execute(f"CREATE TABLE IF NOT EXISTS {table} ({columns})")
            conn.execute(
                f"CREATE INDEX IF NOT EXISTS {self.lines}_order ON {self.lines}(line_key, seq)"
            )
            conn.execute(
                f"CREATE INDEX IF NOT EXISTS {self.admitted}_at ON {self.admitted}(line_key, at)"
            )
            queue = self.app.broker.tables.QUEUE
            columns = {row[1] for row in conn.execute(f"PRAGMA table_info({queue})").fetchall()}
        # pynenc 0.4.0's queue has a queue name and a priority per row; 0.3.1's does not.
        self._queue_by_name = "queue_name" in columns

    def _connect(self) -> connections.KeptConnection:
        """A connection for one step, its transaction committed (or rolled back) as the block
        ends: kept (keyclaim.connections), or opened for the step (keep_sqlite_connections
        False), without pynenc's journal-mode pragma, which waits on the database's locks.

        pynenc builds its broker and state backend on first use, and writes as it builds them
        (0.4.0: the app's info). First used inside a step, that write would wait on the step's
        own write lock for SQLite's 30 s busy timeout: both are built before the step begins.
        """
        _ = (self.app.broker, self.app.state_backend)  # built here, outside any step
        return connections.POOL.take(self.sqlite_db_path)

    def _begin(self, conn: Any) -> None:
        """Take the database's write lock: every other step waits here until we commit."""
        conn.execute("BEGIN IMMEDIATE")

    def claim_in_store(
        self, invocation: "DistributedInvocation", runner_id: str, dead_after: float, busy: Verdict
    ) -> Decision:
        inv_id = invocation.invocation_id
        key = key_arguments(invocation)
        with self._connect() as conn:
            self._begin(conn)
            alive_since = host_clock() - dead_after
            current = self._status(conn, inv_id)
            if current is None:
                conn.rollback()
                return Decision(Verdict.SKIP)
            line = None if key is None else line_key(invocation, key)
            holders = [] if line is None else self._holders(conn, line)
            limit, now = limits.of(invocation), host_clock()
            free_at = None if line is None else self._rate_free_at(conn, line, limit, now)
            decision = self.decide(
                invocation, current, holders, runner_id, alive_since, busy, free_at
            )
            for invocation_id, record in decision.writes:
                self._write_status(conn, invocation_id, record)
            for recovered in decision.recovered:
                self._queue(conn, recovered)
            if key is not None and line is not None:
                if decision.verdict in (Verdict.RUN, Verdict.WAIT) and decision.takes_key:
                    conn.execute(
                        f"INSERT INTO {self.holders} VALUES (?, ?, ?)",
                        (line, decision.slot, inv_id),
                    )
                if decision.verdict is Verdict.RUN:
                    self._index(conn, invocation)
                    fence = fence_key(line, decision.slot)
                    decision.token = self._issue_token(conn, inv_id, fence)
                    self._admit(conn, inv_id, line, limit, now)
                elif decision.verdict is Verdict.WAIT and decision.due is not None:
                    conn.execute(
                        f"INSERT OR REPLACE INTO {self.dues} VALUES (?, ?, ?, ?)",
                        (inv_id, line, BOOT, decision.due),
                    )
                    decision.due_in = decision.due - now
                elif decision.verdict is Verdict.PARK:
                    self._park(conn, line, inv_id)
            self._count(conn, "claims")
            self._count(conn, f"claims of {invocation.task.task_id.key}")
            conn.commit()
        return decision

    def admit_in_store(self, invocation: "DistributedInvocation") -> bool:
        key = key_arguments(invocation)
        assert key is not None
        line, inv_id = line_key(invocation, key), invocation.invocation_id
        with self._connect() as conn:
            self._begin(conn)
            self._index(conn, invocation)  # before it is queued: every claimer can see it
            holders = self._holders(conn, line) if waits_in_line(invocation) else []
            queued = self.admits(invocation, holders)
            if not waits_in_line(invocation):
                self._queue(conn, inv_id)
            elif queued:
                slot = free_slot(holders, limits.of(invocation).slots)
                conn.execute(f"INSERT INTO {self.holders} VALUES (?, ?, ?)", (line, slot, inv_id))
                self._queue(conn, inv_id)
            else:
                self._park(conn, line, inv_id)
            conn.commit()
        return queued

    def _park(self, conn: Any, line: str, invocation_id: str) -> None:
        """At the end of its key's line (once: it may already wait there)."""
        conn.execute(
            f"INSERT OR IGNORE INTO {self.lines} (line_key, invocation_id) VALUES (?, ?)",
            (line, invocation_id),
        )

    def _atomic_status_transition(
        self, invocation_id: "InvocationId", status: InvocationStatus, runner_id: str | None = None
    ) -> InvocationStatusRecord:
        """pynenc's transition (read, validate, write under BEGIN IMMEDIATE), and in the same
        transaction, on a final status: the key goes to the head of its line."""
        with self._connect() as conn:
            self._begin(conn)
            current = self._status(conn, invocation_id)
            if current is None:
                raise KeyError(f"Invocation ID {invocation_id} not found")
            new = status_record_transition(current, status, runner_id)
            self._write_status(conn, invocation_id, new)
            handed = self._release(conn, invocation_id) if new.status.is_final() else None
            conn.commit()
        if handed:  # the next call of the key is on the queue: this process's runner may go
            self.wake_now()
        return new

    def recover_in_store(
        self, invocation_id: str, runner_id: str, dead_after: float, max_pending: float
    ) -> list[InvocationStatusRecord]:
        with self._connect() as conn:
            self._begin(conn)
            record = self._status(conn, invocation_id)
            lost = record is not None and self._lost(
                conn, invocation_id, record, dead_after, max_pending
            )
            if record is None or not lost:
                conn.rollback()
                return []
            records = recovery(record, runner_id)
            for each in records:
                self._write_status(conn, invocation_id, each)
            self._queue(conn, invocation_id)
            conn.commit()
        return records

    def _lost(
        self,
        conn: Any,
        invocation_id: str,
        record: InvocationStatusRecord,
        dead_after: float,
        max_pending: float,
    ) -> bool:
        """Still RUNNING under a runner silent for dead_after, or PENDING for max_pending."""
        if record.status is S.PENDING:
            return bool(self._pending_too_long(conn, max_pending, invocation_id))
        if record.status is not S.RUNNING:
            return False
        beat = self._beat(conn, record.runner_id or "")
        return beat is not None and beat < host_clock() - dead_after  # none: see Holder

    def _beat(self, conn: Any, runner_id: str) -> float | None:
        """The runner's last heartbeat on this host's clock; None if none in this boot."""
        row = conn.execute(
            f"SELECT at FROM {self.beats} WHERE runner_id = ? AND boot = ?", (runner_id, BOOT)
        ).fetchone()
        return None if row is None else float(row[0])

    def beat_in_store(self, runner_ids: list[str]) -> None:
        now = host_clock()
        with self._connect() as conn:
            conn.executemany(
                f"INSERT OR REPLACE INTO {self.beats} VALUES (?, ?, ?)",
                [(runner_id, BOOT, now) for runner_id in runner_ids],
            )

    def silent_runners(self, runner_ids: set[str], window: float, adopt: bool = False) -> set[str]:
        with self._connect() as conn:
            now = host_clock()
            beats = {r: self._beat(conn, r) for r in runner_ids}
            unseen = {r for r, beat in beats.items() if beat is None}
            if adopt:  # a first beat for those the store has none of (in this boot)
                conn.executemany(
                    f"INSERT INTO {self.beats} VALUES (?, ?, ?) ON CONFLICT(runner_id) DO UPDATE "
                    "SET boot = excluded.boot, at = excluded.at WHERE boot != excluded.boot",
                    [(r, BOOT, now) for r in unseen],
                )
            stale = {r for r, beat in beats.items() if beat is not None and beat < now - window}
            return stale if adopt else stale | unseen

    def pending_too_long(self, window: float) -> list[str]:
        with self._connect() as conn:
            return self._pending_too_long(conn, window)

    def _pending_too_long(self, conn: Any, window: float, only: str | None = None) -> list[str]:
        """PENDING since a claim made more than window seconds ago on this host's clock (or in
        an earlier boot); one with no claim of ours is judged by pynenc's own timestamp. only:
        this invocation alone."""
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

    def holders_to_heal(self) -> tuple[list[str], list[str]]:
        queue = self.app.broker.tables.QUEUE
        with self._connect() as conn:
            rows = conn.execute(
                f"SELECT h.invocation_id, i.status, EXISTS (SELECT 1 FROM {queue} q "
                f"WHERE q.invocation_id = h.invocation_id) FROM {self.holders} h "
                f"LEFT JOIN {self.tables.INVOCATIONS} i ON i.invocation_id = h.invocation_id "
                # One waiting for its rate window is off the queue on purpose (its due time).
                f"WHERE h.invocation_id NOT IN (SELECT invocation_id FROM {self.dues})"
            ).fetchall()
        ended_or_stuck = [i for i, status, _ in rows if status is None or S(status) in UNMOVING]
        unqueued = [
            i
            for i, status, queued in rows
            if status and S(status).is_available_for_run() and not queued
        ]
        return ended_or_stuck, unqueued

    def heal_in_store(
        self, invocation_id: str, runner_id: str, stuck: bool, requeue: bool
    ) -> list[InvocationStatusRecord]:
        with self._connect() as conn:
            self._begin(conn)
            holds = conn.execute(
                f"SELECT 1 FROM {self.holders} WHERE invocation_id = ?", (invocation_id,)
            ).fetchone()
            record = self._status(conn, invocation_id)
            written: list[InvocationStatusRecord] = []
            if holds is None:
                pass  # healed meanwhile
            elif record is None or record.status.is_final():
                self._release(conn, invocation_id)
            elif record.status in UNMOVING and stuck:
                written = [status_record_transition(record, S.REROUTED, runner_id)]
                self._write_status(conn, invocation_id, written[0])
                self._queue(conn, invocation_id)
            elif (
                requeue
                and record.status.is_available_for_run()
                and not self._queued(conn, invocation_id)
            ):
                self._queue(conn, invocation_id)
            conn.commit()
        return written

    def _queued(self, conn: Any, invocation_id: str) -> bool:
        queue = self.app.broker.tables.QUEUE
        found = conn.execute(f"SELECT 1 FROM {queue} WHERE invocation_id = ?", (invocation_id,))
        return found.fetchone() is not None

    def _release(self, conn: Any, invocation_id: str) -> str | None:
        """A final invocation lets go of its slot (the head of its line takes it, and is
        returned), or of its place in a line."""
        conn.execute(f"DELETE FROM {self.dues} WHERE invocation_id = ?", (invocation_id,))
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
        if head is None:
            conn.execute(f"DELETE FROM {self.holders} WHERE invocation_id = ?", (invocation_id,))
            return None
        conn.execute(f"DELETE FROM {self.lines} WHERE seq = ?", (head[0],))
        conn.execute(
            f"UPDATE {self.holders} SET invocation_id = ? WHERE line_key = ? AND slot = ?",
            (head[1], line, slot),
        )
        self._queue(conn, head[1])
        return str(head[1])

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

    def _rate_free_at(self, conn: Any, line: str, limit: Limit, now: float) -> float | None:
        """None when the key's rate admits a call now; else when its window frees (this host's
        clock). Admissions of an earlier boot are forgotten (see keyclaim/README.md)."""
        if limit.rate is None:
            return None
        times = [
            at
            for (at,) in conn.execute(
                f"SELECT at FROM {self.admitted} WHERE line_key = ? AND boot = ? AND at > ? "
                "ORDER BY at",
                (line, BOOT, now - limit.window),
            ).fetchall()
        ]
        return None if len(times) < limit.rate else times[len(times) - limit.rate] + limit.window

    def _admit(self, conn: Any, invocation_id: str, line: str, limit: Limit, now: float) -> None:
        """A call admitted: counted in its key's rate window (older admissions pruned), and no
        longer waiting for it."""
        conn.execute(f"DELETE FROM {self.dues} WHERE invocation_id = ?", (invocation_id,))
        if limit.rate is None:
            return
        conn.execute(
            f"DELETE FROM {self.admitted} WHERE line_key = ? AND (boot != ? OR at <= ?)",
            (line, BOOT, now - limit.window),
        )
        conn.execute(f"INSERT INTO {self.admitted} VALUES (?, ?, ?)", (line, BOOT, now))

    def release_due_in_store(self) -> tuple[list[str], float | None]:
        with self._connect() as conn:
            # A read first, without the write lock: most sweeps find nothing waiting.
            (first,) = conn.execute(f"SELECT MIN(due) FROM {self.dues}").fetchone()
            if first is None:
                return [], None
            self._begin(conn)
            now = host_clock()
            due = conn.execute(
                f"SELECT invocation_id FROM {self.dues} WHERE boot != ? OR due <= ?", (BOOT, now)
            ).fetchall()
            released = []
            for (invocation_id,) in due:
                conn.execute(f"DELETE FROM {self.dues} WHERE invocation_id = ?", (invocation_id,))
                record = self._status(conn, invocation_id)
                holds = conn.execute(
                    f"SELECT 1 FROM {self.holders} WHERE invocation_id = ?", (invocation_id,)
                ).fetchone()
                available = record is not None and record.status.is_available_for_run()
                if holds and available and not self._queued(conn, invocation_id):
                    self._queue(conn, invocation_id)
                    released.append(invocation_id)
            (first,) = conn.execute(
                f"SELECT MIN(due) FROM {self.dues} WHERE boot = ?", (BOOT,)
            ).fetchone()
            conn.commit()
        return released, None if first is None else max(0.0, first - now)

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
        """The key's next fencing token, written with the claim itself, and when it was made.
        A key's first token is the time (first_token); SQLite has no clock of its own, so on
        SQLite that is this process's wall clock, used for nothing else."""
        (issued,) = conn.execute(
            f"INSERT INTO {self.fence_counters} VALUES (?, ?) "
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

    def _record_of(self, invocation_id: str) -> InvocationStatusRecord:
        with self._connect() as conn:
            if (record := self._status(conn, invocation_id)) is None:
                raise KeyError(f"Invocation ID {invocation_id} not found")
            return record

    def fence_slot(self, invocation_id: str) -> int | None:
        with self._connect() as conn:
            row = conn.execute(
                f"SELECT slot FROM {self.holders} WHERE invocation_id = ?", (invocation_id,)
            ).fetchone()
        return None if row is None else int(row[0])

    def fence_token(self, invocation_id: str) -> int | None:
        with self._connect() as conn:
            row = conn.execute(
                f"SELECT token FROM {self.claimed} WHERE invocation_id = ?", (invocation_id,)
            ).fetchone()
        return None if row is None else int(row[0])

    def claim_counts(self, task: str | None = None) -> dict[str, int]:
        """Claims made so far (of one task's invocations, given its key); a SQLite claim waits
        for the write lock, so it never retries."""
        name = "claims" if task is None else f"claims of {task}"
        with self._connect() as conn:
            row = conn.execute(
                f"SELECT value FROM {self.claim_stats} WHERE name = ?", (name,)
            ).fetchone()
        return {"claims": int(row[0]) if row else 0, "retries": 0}

    def waiting(self) -> int:
        """Calls parked in a line right now, all keys together."""
        with self._connect() as conn:
            return int(conn.execute(f"SELECT COUNT(*) FROM {self.lines}").fetchone()[0])
