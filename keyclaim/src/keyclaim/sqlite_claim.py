"""The claim on SQLite: every step is one `BEGIN IMMEDIATE` transaction (one writer at a time).

Selected by class name (orchestrator_cls="AtomicClaimSQLiteOrchestrator"): keyclaim.install.
Written and tested against pynenc 0.3.1 and 0.4.0 (keyclaim.versions); its tables are
keyclaim.sqlite_tables'. Liveness is read on the host's clock since boot (keyclaim.clock), a
key's first token on this process's wall clock. The upstream change that retires it: the same
steps in `SQLiteOrchestrator`, with the hand-over inside `_atomic_status_transition` (the
repo's docs/upstream.md).
"""

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

from pynenc.invocation.status import (
    InvocationStatus,
    InvocationStatusRecord,
    status_record_transition,
)

from keyclaim import limits, overrides, transaction
from keyclaim.clock import BOOT, host_clock
from keyclaim.decision import UNMOVING, Decision, Verdict, free_slot, recovery
from keyclaim.keys import fence_key, key_arguments, line_key, refuse_long_keys, waits_in_line
from keyclaim.sqlite_tables import SQLiteClaimTables

if TYPE_CHECKING:
    from pynenc.identifiers.invocation_id import InvocationId
    from pynenc.invocation.dist_invocation import DistributedInvocation

S = InvocationStatus


class AtomicClaimSQLiteOrchestrator(SQLiteClaimTables):
    """SQLite: each step one BEGIN IMMEDIATE transaction, in keyclaim.sqlite_tables' tables."""

    BACKEND = "sqlite"
    KEEPS_BY_DEFAULT = False  # kept connections are keep_connections' choice, not the claim's

    def claim_in_store(
        self, invocation: "DistributedInvocation", runner_id: str, dead_after: float, busy: Verdict
    ) -> Decision:
        inv_id, key = invocation.invocation_id, key_arguments(invocation)
        with self._connect() as conn:
            self._begin(conn)
            alive_since = host_clock() - dead_after
            current = self._status(conn, inv_id)
            if current is None:  # nothing written: the block's commit is empty
                return Decision(Verdict.SKIP)
            line = None if key is None else line_key(invocation, key)
            holders = [] if line is None else self._holders(conn, line)
            limit, now = limits.of(invocation), host_clock()
            if line is not None:  # the key's override, read in this step
                limit = overrides.sqlite_limit(self, conn, invocation, line)
            free_at = None
            if line is not None:
                free_at = self._rate_free_at(conn, line, limit, now, holders, alive_since)
            decision = self.decide(
                invocation, current, holders, runner_id, alive_since, busy, free_at
            )
            for invocation_id, record in decision.writes:
                self._write_status(conn, invocation_id, record)
            for recovered in decision.recovered:
                self._queue(conn, recovered)
            if key is not None and line is not None:
                if decision.verdict in (Verdict.RUN, Verdict.WAIT) and decision.takes_key:
                    self._hold(conn, line, decision.slot, inv_id)
                if decision.verdict is Verdict.RUN:
                    self._index(conn, invocation)
                    decision.token = self._issue_token(conn, inv_id, fence_key(line, decision.slot))
                    self._admit(conn, inv_id, line, limit, now)
                    if limit.rate is not None:
                        decision.admitted = (line, inv_id, limit.window)
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

    # Many writes, one transaction (keyclaim.transaction): a registration, a claim with its
    # histories, and each try of a call's start or outcome with its key's hand-over.

    def _one(self) -> AbstractContextManager[None]:
        if not transaction.keeps_all(self.app):
            return nullcontext()
        return transaction.one(self.sqlite_db_path, self.app.logger)

    def route_call(self, call: Any) -> "DistributedInvocation":
        with self._registering([call]):
            return super().route_call(call)

    def route_calls(self, calls: list[Any]) -> list["DistributedInvocation"]:
        """pynenc's batch (`task.parallelize`): parallel_batch_size calls a transaction."""
        with self._registering(calls):
            return super().route_calls(calls)

    @contextmanager
    def _registering(self, calls: list[Any]) -> Iterator[None]:
        """The calls' registration in one transaction, after what must come first or writes on
        connections of its own: refusing a long key, the fleet's table, and pynenc's client
        data store (built on first use; a large argument is stored there). A registration
        dedupe's look for a call to merge into is then atomic with the registration."""
        refuse_long_keys(calls)
        self._check_producer()
        for call in calls:
            _ = call.serialized_arguments  # kept by the call
        with self._one():
            yield

    def _part(self) -> AbstractContextManager[Callable[[Callable[[], None]], None]] | None:
        return transaction.part(self.sqlite_db_path) if transaction.keeps_all(self.app) else None

    def notify(self, due_in: float, count: int) -> None:
        """Once the registration is committed: a worker woken before would find nothing."""
        wake = super().notify
        transaction.after_commit(self.sqlite_db_path, lambda: wake(due_in, count))

    def claim(self, invocation: Any, runner_ctx: Any, busy: Verdict = Verdict.PARK) -> Verdict:
        with self._one():
            return super().claim(invocation, runner_ctx, busy)

    def _until_answered(self, invocation_id: str, write: Callable[[], object]) -> None:
        """Each try in one transaction: the check that the call still holds its claim, its
        result, its status, its key's hand-over and the histories, all or nothing."""

        def each() -> object:
            with self._one():
                return write()

        super()._until_answered(invocation_id, each)

    def admit_in_store(self, invocation: "DistributedInvocation") -> bool:
        key = key_arguments(invocation)
        assert key is not None
        line, inv_id = line_key(invocation, key), invocation.invocation_id
        with self._connect() as conn:
            self._begin(conn)
            self._index(conn, invocation)  # before it is queued: every claimer can see it
            holders = self._holders(conn, line) if waits_in_line(invocation) else []
            limit = overrides.sqlite_limit(self, conn, invocation, line)
            queued = self.admits(invocation, holders)
            if not waits_in_line(invocation):
                self._queue(conn, inv_id)
            elif queued:
                slot = free_slot(holders, limit.slots)
                self._hold(conn, line, slot, inv_id)
                if merge := limits.of(invocation).merge:  # open to merging, then due
                    due = (inv_id, line, BOOT, host_clock() + merge)
                    conn.execute(f"INSERT OR REPLACE INTO {self.dues} VALUES (?, ?, ?, ?)", due)
                else:
                    self._queue(conn, inv_id)
            else:
                self._park(conn, line, inv_id)
            conn.commit()
        return queued

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
        if handed:  # the next call of the key is queued: this runner may take it, once
            self._handing(handed)
            transaction.after_commit(self.sqlite_db_path, lambda: self._handed_on(handed))
        return new

    def dequeue(self, beside: str | None = None, queue_name: str | None = None) -> str | None:
        """The oldest invocation off the queue, in the order pynenc's broker takes them (0.4.0:
        of the queue `beside` is on, or of `queue_name`, by priority); None when none is left."""
        queue = self.app.broker.tables.QUEUE
        where, order, given = "", "created_at, id", []
        if self._queue_by_name:
            order = "priority DESC, created_at, id"
            where, given = "WHERE queue_name = ?", [queue_name or self.app.broker.conf.queues[0]]
            if beside:
                named = f"SELECT queue_name FROM {queue} WHERE invocation_id = ?"
                where, given = f"WHERE queue_name = ({named})", [beside]
        with self._connect() as conn:
            self._begin(conn)
            if beside and self._line_first(conn, beside, where, given, order):
                where, given = "WHERE invocation_id = ?", [beside]
            row = conn.execute(
                f"DELETE FROM {queue} WHERE id = (SELECT id FROM {queue} {where} "
                f"ORDER BY {order} LIMIT 1) RETURNING invocation_id",
                given,
            ).fetchone()
            conn.commit()
        return None if row is None else str(row[0])

    # The loop's look: with kept connections, a call comes off the queue in the step that
    # claims it (one write lock, looked for as keyclaim.transaction does).

    def _may_have_queued(self) -> bool:
        if not transaction.keeps_all(self.app):
            return True
        with self._connect() as conn:
            queue = self.app.broker.tables.QUEUE
            return bool(conn.execute(f"SELECT EXISTS (SELECT 1 FROM {queue})").fetchone()[0])

    def _dequeuer(self) -> Callable[..., str | None]:
        if not transaction.keeps_all(self.app):
            return super()._dequeuer()
        return lambda queue_name=None: self.dequeue(queue_name=queue_name)

    def restamp_in_store(self, invocation_id: str, admitted: tuple[str, str, float]) -> None:
        line = admitted[0]
        with self._connect() as conn:
            self._begin(conn)  # inside the call's RUNNING step, with kept connections
            now = host_clock()  # once the lock is held: a wait for it is on the way to the call
            dated = conn.execute(
                f"UPDATE {self.admitted} SET at = MAX(at, ?) "
                "WHERE line_key = ? AND invocation_id = ? AND boot = ?",
                (now, line, invocation_id, BOOT),
            )
            if not dated.rowcount:  # pruned, older than the window, before its call started
                self._count_admission(conn, line, invocation_id, now)
            conn.commit()

    def recover_in_store(
        self, invocation_id: str, runner_id: str, dead_after: float, max_pending: float
    ) -> list[InvocationStatusRecord]:
        with self._connect() as conn:
            self._begin(conn)
            record, lost = self._status(conn, invocation_id), False
            if record is not None and record.status is S.PENDING:
                lost = bool(self._pending_too_long(conn, max_pending, invocation_id))
            elif record is not None and record.status is S.RUNNING:
                beat = self._beat(conn, record.runner_id or "")
                lost = beat is not None and beat < host_clock() - dead_after  # none: see Holder
            if record is None or not lost:
                conn.rollback()
                return []
            records = recovery(record, runner_id)
            for each in records:
                self._write_status(conn, invocation_id, each)
            self._queue(conn, invocation_id)
            conn.commit()
        return records

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

    def prune_in_store(self, silent_for: float) -> None:
        rated = max((limit.window for limit in limits.declared().values()), default=0.0)
        now = host_clock()
        with self._connect() as conn:  # the write lock only when there is something to forget
            (longest,) = conn.execute(f"SELECT MAX(per) FROM {self.key_limits}").fetchone()
            rated = max(rated, (longest or 0.0) + limits.DEFAULT_GRACE)  # an override's period
            for table, window in ((self.beats, silent_for), (self.admitted, rated)):
                old = f"FROM {table} WHERE boot != ? OR at < ?", (BOOT, now - window)
                if conn.execute(f"SELECT 1 {old[0]} LIMIT 1", old[1]).fetchone():
                    conn.execute(f"DELETE {old[0]}", old[1])

    def pending_too_long(self, window: float) -> list[str]:
        with self._connect() as conn:
            return self._pending_too_long(conn, window)

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
        # A SQLite claim waits for the write lock: it never retries.
        name = "claims" if task is None else f"claims of {task}"
        with self._connect() as conn:
            row = conn.execute(
                f"SELECT value FROM {self.claim_stats} WHERE name = ?", (name,)
            ).fetchone()
        return {"claims": int(row[0]) if row else 0, "retries": 0}

    def waiting(self) -> int:
        with self._connect() as conn:
            return int(conn.execute(f"SELECT COUNT(*) FROM {self.lines}").fetchone()[0])
