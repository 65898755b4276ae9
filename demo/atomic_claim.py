"""One call per key across runner processes: check the key and claim the invocation in one step.

Install it through pynenc's own configuration, after choosing the backend:

    builder = PynencBuilder().app_id("my_app").sqlite("my.db")   # or .redis(url=...)
    builder = atomic_claim.install(builder, "sqlite", dead_after=15.0)

Written and tested against pynenc 0.3.1 and 0.4.0 (SQLite), and pynenc 0.3.1 with pynenc-redis
0.3.0 (Redis). On any other version `install` refuses to start, in one line naming both.

Why it exists. `BaseOrchestrator.get_additional_invocations_to_run` asks
`is_candidate_to_run_by_concurrency_control` whether an invocation with the same key is PENDING
or RUNNING, and only then moves its own invocation to PENDING, in a separate write. Two runner
processes can both read "free" before either writes, and both run. The same gap crashes runners:
a drop (`reroute_on_concurrency_control=False`) on an invocation that is REROUTED is refused
(`InvocationStatusTransitionError`) and ends the runner loop.

What it does. The orchestrator subclasses below replace that loop with `claim`: one transaction
in the store pynenc already uses (SQLite `BEGIN IMMEDIATE`; Redis `WATCH`/`MULTI`, retried when
a watched key changes) reads the invocation's status, looks for a live PENDING or RUNNING holder
of its key, and writes PENDING (the claim, with its key indexed), CONCURRENCY_CONTROLLED (back to
the queue) or CONCURRENCY_CONTROLLED_FINAL (dropped). A status change the state machine forbids
puts the invocation back on the queue unchanged instead of raising. No lock outside pynenc's state.

A holder whose runner has not sent a heartbeat for `dead_after` seconds is dead: its invocation
goes through pynenc's own recovery path (RUNNING_RECOVERY or PENDING_RECOVERY, then REROUTED and
back on the queue), so a killed worker blocks its account for at most that long.

The upstream change that retires this module: give `BaseOrchestrator` one backend method,
`claim_for_run(invocation, runner_id) -> InvocationStatus`, that performs check and claim in one
atomic step (the two implementations below are that method for SQLite and Redis), call it from
`get_additional_invocations_to_run` and `get_blocking_invocations_to_run` in place of
`is_candidate_to_run_by_concurrency_control` + `set_invocation_status(PENDING)`, and allow
REROUTED -> CONCURRENCY_CONTROLLED_FINAL in `pynenc/invocation/status.py`.
"""

import enum
import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pynenc.conf.config_task import ConcurrencyControlType
from pynenc.invocation.status import (
    InvocationStatus,
    InvocationStatusRecord,
    status_record_transition,
)
from pynenc.orchestrator.sqlite_orchestrator import SQLiteOrchestrator
from pynenc.util.sqlite_utils import create_sqlite_connection

from demo import pynenc_versions

if TYPE_CHECKING:
    from pynenc import PynencBuilder
    from pynenc.identifiers.invocation_id import InvocationId
    from pynenc.invocation.dist_invocation import DistributedInvocation
    from pynenc.runner.runner_context import RunnerContext

try:  # Only the Redis backend needs the plugin; without it, only SQLite is offered.
    from pynenc_redis.orchestrator import RedisOrchestrator
    from redis.client import Pipeline
except ImportError:  # pragma: no cover - depends on the environment
    RedisOrchestrator = None  # type: ignore[assignment,misc]

ORCHESTRATORS = {"sqlite": "AtomicClaimSQLiteOrchestrator", "redis": "AtomicClaimRedisOrchestrator"}
S = InvocationStatus
HELD = (S.PENDING, S.RUNNING)


class Verdict(enum.Enum):
    RUN = "claimed: now PENDING"
    REROUTE = "key busy: CONCURRENCY_CONTROLLED, back to the queue"
    DROP = "key busy: CONCURRENCY_CONTROLLED_FINAL"
    REQUEUE = "key busy, and the state machine allows neither: back to the queue unchanged"
    SKIP = "not available for run (another runner has it, or it is final)"


@dataclass
class Holder:
    """An invocation holding the key: PENDING or RUNNING, and when its runner last beat."""

    invocation_id: str
    record: InvocationStatusRecord
    heartbeat: float | None


@dataclass
class Decision:
    verdict: Verdict
    # Status records to write in the same transaction, in order: (invocation id, record).
    writes: list[tuple[str, InvocationStatusRecord]] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)


def check_versions(backend: str) -> None:
    """Raise UntestedVersion unless the installed versions are ones this module was tested with."""
    pynenc_versions.check("atomic claim", backend)


def check_redis(url: str) -> str | None:
    """Why the Redis at url cannot run the claim (it refuses WATCH/MULTI/EXEC), or None."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.transaction(lambda pipe: pipe.multi(), "atomic-claim:probe")
    except redis.RedisError as exc:
        return f"the Redis at {url} refuses WATCH/MULTI/EXEC, which the claim needs ({exc})"
    finally:
        client.close()
    return None


def install(builder: "PynencBuilder", backend: str, dead_after: float = 15.0) -> "PynencBuilder":
    """Select the claiming orchestrator for backend and a dead-runner window of dead_after seconds.

    Call it after .sqlite() or .redis(), which set pynenc's stock orchestrator.
    """
    check_versions(backend)
    minutes = dead_after / 60
    return builder.custom_config(
        orchestrator_cls=ORCHESTRATORS[backend],
        runner_considered_dead_after_minutes=minutes,
        # A runner writes its heartbeat when it checks the atomic services: 4 beats per window.
        atomic_service_check_interval_minutes=minutes / 4,
    )


class AtomicClaim:
    """The backend-independent half: the loop that claims, and what a claim decides."""

    app: Any

    def claim_in_store(
        self, invocation: "DistributedInvocation", runner_id: str, alive_since: float
    ) -> Decision:  # pragma: no cover - each backend overrides it
        raise NotImplementedError

    def get_additional_invocations_to_run(
        self,
        missing_invocations: int,
        blocking_invocation_ids: set["InvocationId"],
        invocations_to_reroute: set["InvocationId"],
        runner_ctx: "RunnerContext",
        *queue_hooks: Callable,
    ) -> Iterator["DistributedInvocation"]:
        """pynenc's loop, with check-then-claim replaced by claim (queue_hooks: pynenc 0.4.0)."""
        retrieve = self._retriever(*queue_hooks)
        while missing_invocations > 0 and (invocation_id := retrieve()):
            if invocation_id in blocking_invocation_ids:
                continue
            invocation = self.app.state_backend.get_invocation(invocation_id)
            verdict = self.claim(invocation, runner_ctx)
            if verdict is Verdict.RUN:
                missing_invocations -= 1
                yield invocation
            elif verdict is Verdict.REROUTE:
                invocations_to_reroute.add(invocation_id)

    def get_blocking_invocations_to_run(
        self,
        max_num_invocations: int,
        blocking_invocation_ids: set["InvocationId"],
        runner_ctx: "RunnerContext",
    ) -> Iterator["InvocationId"]:
        """Invocations others wait for (blocking control) are claimed the same way."""
        for invocation_id in self.get_blocking_invocations(max_num_invocations):  # type: ignore[attr-defined]
            invocation = self.app.state_backend.get_invocation(invocation_id)
            if self.claim(invocation, runner_ctx, requeue_when_busy=False) is Verdict.RUN:
                blocking_invocation_ids.add(invocation_id)
                yield invocation_id

    def claim(
        self,
        invocation: "DistributedInvocation",
        runner_ctx: "RunnerContext",
        requeue_when_busy: bool = True,
    ) -> Verdict:
        """Check the key and claim in one atomic step; then record what was written."""
        alive_since = time.time() - self.app.conf.runner_considered_dead_after_minutes * 60
        decision = self.claim_in_store(invocation, runner_ctx.runner_id, alive_since)
        for invocation_id, record in decision.writes:
            self._record(invocation_id, record, runner_ctx)
        for invocation_id in decision.recovered:
            self.app.logger.warning(f"invocation:{invocation_id} recovered from a dead runner")
            self._route(invocation_id)
        if decision.verdict is Verdict.REQUEUE and requeue_when_busy:
            self._route(invocation.invocation_id)
        return decision.verdict

    def decide(
        self,
        invocation: "DistributedInvocation",
        current: InvocationStatusRecord,
        holders: Sequence[Holder],
        runner_id: str,
        alive_since: float,
    ) -> Decision:
        """What to write, given the invocation's status and the key's holders, read atomically."""
        if not current.status.is_available_for_run():
            return Decision(Verdict.SKIP)
        decision = Decision(Verdict.RUN)
        live = []
        for holder in holders:
            if holder.heartbeat is not None and holder.heartbeat >= alive_since:
                live.append(holder)
                continue
            # Its runner stopped beating: recover it the way pynenc's recovery services do.
            via = S.RUNNING_RECOVERY if holder.record.status is S.RUNNING else S.PENDING_RECOVERY
            recovering = status_record_transition(holder.record, via, runner_id)
            rerouted = status_record_transition(recovering, S.REROUTED, runner_id)
            decision.writes += [
                (holder.invocation_id, recovering),
                (holder.invocation_id, rerouted),
            ]
            decision.recovered.append(holder.invocation_id)
        target = S.PENDING
        if live:
            reroute = invocation.task.conf.reroute_on_concurrency_control
            decision.verdict = Verdict.REROUTE if reroute else Verdict.DROP
            target = S.CONCURRENCY_CONTROLLED if reroute else S.CONCURRENCY_CONTROLLED_FINAL
            if not current.status.can_transition_to(target):
                # A REROUTED drop (pynenc forbids REROUTED -> FINAL), or a RETRY: queue it again.
                decision.verdict, target = Verdict.REROUTE, S.CONCURRENCY_CONTROLLED
                if not current.status.can_transition_to(target):
                    decision.verdict = Verdict.REQUEUE
                    return decision
            if decision.verdict is not Verdict.DROP:
                blocker = live[0].invocation_id
                self.app.logger.info(
                    f"invocation:{invocation.invocation_id} waits: key held by invocation:{blocker}"
                )
        new = status_record_transition(current, target, runner_id)
        decision.writes.append((invocation.invocation_id, new))
        return decision

    @staticmethod
    def key_arguments(invocation: "DistributedInvocation") -> dict[str, str] | None:
        """The key's serialized arguments; None when the task has no running control."""
        mode = invocation.task.conf.running_concurrency
        if mode == ConcurrencyControlType.DISABLED:
            return None
        return invocation.call.serialized_args_for_concurrency_control(mode) or {}

    def _record(
        self, invocation_id: str, record: InvocationStatusRecord, runner_ctx: "RunnerContext"
    ) -> None:
        """What BaseOrchestrator.set_invocation_status does after its transition."""
        if record.status.is_final():
            self.release_waiters(invocation_id)  # type: ignore[attr-defined]
            self.set_up_invocation_auto_purge(invocation_id)  # type: ignore[attr-defined]
        self.app.state_backend.add_history(invocation_id, record, runner_ctx)
        self.app.trigger.report_tasks_status([invocation_id], record.status)
        self.app.logger.info(f"invocation:{invocation_id} status:{record.status.value}")

    def _route(self, invocation_id: str) -> None:
        """Put an invocation back on its queue (pynenc 0.4.0 routes by the task's queue)."""
        if route := getattr(self, "route_invocation", None):
            route(self.app.state_backend.get_invocation(invocation_id))
        else:
            self.app.broker.route_invocation(invocation_id)

    def _retriever(self, *queue_hooks: Callable) -> Callable[[], "InvocationId | None"]:
        if not queue_hooks:
            return self.app.broker.retrieve_invocation
        queue_provider, on_queue_retrieved = queue_hooks

        def retrieve() -> "InvocationId | None":
            for queue_name in queue_provider():
                if invocation_id := self.app.broker.retrieve_invocation(queue_name):
                    on_queue_retrieved(queue_name)
                    return invocation_id
            return None

        return retrieve


class AtomicClaimSQLiteOrchestrator(AtomicClaim, SQLiteOrchestrator):
    """SQLite: check and claim inside one BEGIN IMMEDIATE transaction (one writer at a time)."""

    def claim_in_store(
        self, invocation: "DistributedInvocation", runner_id: str, alive_since: float
    ) -> Decision:
        inv_id = invocation.invocation_id
        key = self.key_arguments(invocation)
        with closing(create_sqlite_connection(self.sqlite_db_path)) as conn, conn:
            conn.execute("BEGIN IMMEDIATE")
            row = conn.execute(
                f"SELECT status, status_runner_id, status_timestamp "
                f"FROM {self.tables.INVOCATIONS} WHERE invocation_id = ?",
                (inv_id,),
            ).fetchone()
            if row is None:
                conn.rollback()
                return Decision(Verdict.SKIP)
            current = InvocationStatusRecord(S(row[0]), row[1], row[2])
            holders = [] if key is None else self._holders(conn, invocation, key)
            decision = self.decide(invocation, current, holders, runner_id, alive_since)
            for invocation_id, record in decision.writes:
                conn.execute(
                    f"UPDATE {self.tables.INVOCATIONS} SET status = ?, status_runner_id = ?, "
                    f"status_timestamp = ? WHERE invocation_id = ?",
                    (
                        record.status.value,
                        record.runner_id,
                        record.timestamp.timestamp(),
                        invocation_id,
                    ),
                )
            if decision.verdict is Verdict.RUN and key is not None:
                # Indexed in the same step, so the claim is visible to every other claimer.
                for arg, value in invocation.call.serialized_arguments.items():
                    conn.execute(
                        f"INSERT OR REPLACE INTO {self.tables.INVOCATION_ARGS} "
                        f"(invocation_id, arg_key, arg_value) VALUES (?, ?, ?)",
                        (inv_id, arg, value),
                    )
            conn.commit()
        return decision

    def _holders(
        self, conn: Any, invocation: "DistributedInvocation", key: dict[str, str]
    ) -> list[Holder]:
        joins, params = [], []
        for n, (arg, value) in enumerate(key.items()):
            joins.append(
                f"JOIN {self.tables.INVOCATION_ARGS} a{n} ON a{n}.invocation_id = i.invocation_id "
                f"AND a{n}.arg_key = ? AND a{n}.arg_value = ?"
            )
            params += [arg, value]
        rows = conn.execute(
            f"SELECT i.invocation_id, i.status, i.status_runner_id, i.status_timestamp, "
            f"r.last_heartbeat FROM {self.tables.INVOCATIONS} i {' '.join(joins)} "
            f"LEFT JOIN {self.tables.RUNNER_HEARTBEATS} r ON r.runner_id = i.status_runner_id "
            f"WHERE i.task_id_key = ? AND i.status IN (?, ?) AND i.invocation_id != ?",
            (
                *params,
                invocation.task.task_id.key,
                *(s.value for s in HELD),
                invocation.invocation_id,
            ),
        ).fetchall()
        return [Holder(r[0], InvocationStatusRecord(S(r[1]), r[2], r[3]), r[4]) for r in rows]


if RedisOrchestrator is not None:

    class AtomicClaimRedisOrchestrator(AtomicClaim, RedisOrchestrator):
        """Redis: WATCH the invocation and the PENDING and RUNNING sets, then MULTI/EXEC.

        Any claim, start or finish elsewhere changes a watched set, so EXEC fails and the
        whole read-decide-write is retried on fresh data: the check and the claim are one step.
        """

        def claim_in_store(
            self, invocation: "DistributedInvocation", runner_id: str, alive_since: float
        ) -> Decision:
            inv_id = invocation.invocation_id
            key = self.key_arguments(invocation)
            task_key = invocation.task.task_id.key
            held_sets = [self.key.status_to_invocations(s) for s in HELD]

            def step(pipe: Pipeline) -> Decision:
                current = self._read_status(pipe, inv_id)
                if current is None:
                    return Decision(Verdict.SKIP)
                holders: list[Holder] = []
                if key is not None:
                    ids = {m.decode() for m in pipe.sunion(held_sets)} - {inv_id}
                    ids &= {m.decode() for m in pipe.smembers(self.key.task(task_key))}
                    for arg, value in key.items():
                        ids &= {
                            m.decode() for m in pipe.smembers(self.key.args(task_key, arg, value))
                        }
                    found = (self._holder(pipe, holder_id) for holder_id in sorted(ids))
                    holders = [holder for holder in found if holder]
                decision = self.decide(invocation, current, holders, runner_id, alive_since)
                pipe.multi()
                previous = {h.invocation_id: h.record.status for h in holders}
                previous[inv_id] = current.status
                for invocation_id, record in decision.writes:
                    self._write_status(pipe, invocation_id, previous[invocation_id], record)
                    previous[invocation_id] = record.status
                if decision.verdict is Verdict.RUN and key is not None:
                    for arg, value in invocation.call.serialized_arguments.items():
                        pipe.sadd(self.key.args(task_key, arg, value), inv_id)
                return decision

            watched = [self.key.invocation_to_status(inv_id), *held_sets]
            return self.client.transaction(step, *watched, value_from_callable=True)

        def _atomic_status_transition(
            self, invocation_id: str, status: InvocationStatus, runner_id: str | None = None
        ) -> InvocationStatusRecord:
            """pynenc-redis 0.3.0 reads, then writes without WATCH: here the read is watched."""

            def step(pipe: Pipeline) -> InvocationStatusRecord:
                current = self._read_status(pipe, invocation_id)
                if current is None:
                    raise KeyError(f"Invocation status {invocation_id} not found in Redis")
                new = status_record_transition(current, status, runner_id)
                pipe.multi()
                self._write_status(pipe, invocation_id, current.status, new)
                return new

            status_key = self.key.invocation_to_status(invocation_id)
            return self.client.transaction(step, status_key, value_from_callable=True)

        def _read_status(self, pipe: Pipeline, invocation_id: str) -> InvocationStatusRecord | None:
            raw = pipe.get(self.key.invocation_to_status(invocation_id))
            return InvocationStatusRecord.from_json(json.loads(raw)) if raw else None

        def _holder(self, pipe: Pipeline, invocation_id: str) -> Holder | None:
            record = self._read_status(pipe, invocation_id)
            if record is None or record.status not in HELD:
                return None
            beat = pipe.hget(self.key.runner_heartbeat(record.runner_id or ""), "last_heartbeat")
            return Holder(invocation_id, record, float(beat) if beat else None)

        def _write_status(
            self,
            pipe: Pipeline,
            invocation_id: str,
            old: InvocationStatus,
            new: InvocationStatusRecord,
        ) -> None:
            pipe.srem(self.key.status_to_invocations(old), invocation_id)
            pipe.sadd(self.key.status_to_invocations(new.status), invocation_id)
            pipe.set(self.key.invocation_to_status(invocation_id), json.dumps(new.to_json()))
