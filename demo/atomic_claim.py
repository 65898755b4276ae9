"""One call per key across runner processes: check the key and claim the invocation in one step.

Install it through pynenc's own configuration, after choosing the backend:

    builder = PynencBuilder().app_id("my_app").sqlite("my.db")   # or .redis(url=...)
    builder = atomic_claim.install(builder, "sqlite", dead_after=15.0, longest_call=10.0)
    app = builder.build()
    atomic_claim.exit_unless_sound("my_app.py", app, wanted=True)

Written and tested against pynenc 0.3.1 and 0.4.0 (SQLite), and pynenc 0.3.1 with pynenc-redis
0.3.0 (Redis). Any other version is refused in one line, wherever the classes are built.

Why it exists. `BaseOrchestrator.get_additional_invocations_to_run` asks
`is_candidate_to_run_by_concurrency_control` whether an invocation with the same key is PENDING
or RUNNING, and only then moves its own invocation to PENDING, in a separate write. Two runner
processes can both read "free" before either writes, and both run. The same gap crashes runners:
a drop (`reroute_on_concurrency_control=False`) on an invocation that is REROUTED is refused
(`InvocationStatusTransitionError`) and ends the runner loop.

What it does. The orchestrator subclasses below replace that loop with `claim`: one transaction
in the store pynenc already uses (SQLite `BEGIN IMMEDIATE`; Redis `WATCH`/`MULTI`, retried a
bounded number of times with backoff when a watched key changes) reads the invocation's status,
looks for a live PENDING or RUNNING holder of its key, and writes PENDING (the claim, with its key
indexed and a new fencing token), CONCURRENCY_CONTROLLED (back to the queue) or
CONCURRENCY_CONTROLLED_FINAL (dropped). A status change the state machine forbids (a RETRY, a
REROUTED drop) puts the invocation back on the queue once the claiming pass is over, never in a
loop. No lock outside pynenc's state.

Faults. A holder whose runner has sent no heartbeat for `dead_after` seconds is dead: its
invocation goes through pynenc's own recovery path (RUNNING_RECOVERY or PENDING_RECOVERY, then
REROUTED and back on the queue). A runner that was only stalled may still finish that call, so
every claim carries a fencing token, one sequence per key, that only grows: the task sends it with
its call (`token(app)`), and the provider refuses the effect of a call older than the newest token
it has seen. A result that comes back after its claim was taken away is not stored either. The
windows are checked against the configuration pynenc resolved (environment variables and
`[tool.pynenc]` rank above the builder): `dead_after` must be longer than the longest a call can
stay in flight, and runners must beat at least three times per window.

The upstream change that retires this module: give `BaseOrchestrator` one backend method,
`claim_for_run(invocation, runner_id) -> (InvocationStatus, fencing token)`, that performs check
and claim in one atomic step (the two implementations below are that method for SQLite and
Redis), call it from `get_additional_invocations_to_run` and `get_blocking_invocations_to_run`,
store results only while the claim holds, and allow REROUTED -> CONCURRENCY_CONTROLLED_FINAL in
`pynenc/invocation/status.py` (docs/upstream.md writes it out).
"""

import enum
import json
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pynenc import context
from pynenc.conf.config_task import ConcurrencyControlType
from pynenc.exceptions import InvocationStatusError
from pynenc.invocation.status import (
    InvocationStatus,
    InvocationStatusRecord,
    status_record_transition,
)
from pynenc.orchestrator.sqlite_orchestrator import SQLiteOrchestrator
from pynenc.util.sqlite_utils import create_sqlite_connection

from demo import pynenc_versions

if TYPE_CHECKING:
    from pynenc import Pynenc, PynencBuilder
    from pynenc.identifiers.invocation_id import InvocationId
    from pynenc.invocation.dist_invocation import DistributedInvocation
    from pynenc.runner.runner_context import RunnerContext

try:  # Only the Redis backend needs the plugin; without it, only SQLite is offered.
    from pynenc_redis.orchestrator import RedisOrchestrator
    from redis.client import Pipeline
    from redis.exceptions import WatchError
except ImportError:  # pragma: no cover - depends on the environment
    RedisOrchestrator = None  # type: ignore[assignment,misc]

ORCHESTRATORS = {"sqlite": "AtomicClaimSQLiteOrchestrator", "redis": "AtomicClaimRedisOrchestrator"}
# Set by install(): the longest a call can stay in flight (the task's HTTP timeout), in seconds.
LONGEST_CALL_KEY = "atomic_claim_longest_call_sec"
BEATS_PER_WINDOW = 4  # what install() asks for
FEWEST_BEATS = 3  # what the check accepts: one lost beat must not look like a death
# Redis: a claim whose watched keys keep changing is tried this often, with growing pauses.
REDIS_ATTEMPTS = 50
BACKOFF_SECONDS = (0.001, 0.05)  # first pause, longest pause
S = InvocationStatus
HELD = (S.PENDING, S.RUNNING)


class Refused(SystemExit):
    """The claim would not hold with this configuration: one line, no traceback."""


class StatusContention(InvocationStatusError):
    """A watched Redis status change that other writers kept beating, every time it was tried."""


class Verdict(enum.Enum):
    RUN = "claimed: now PENDING"
    REROUTE = "key busy: CONCURRENCY_CONTROLLED, back to the queue"
    DROP = "key busy: CONCURRENCY_CONTROLLED_FINAL"
    REQUEUE = "key busy, and the state machine allows neither: back to the queue unchanged"
    LEAVE = "key busy: left as it is, still on the queue (the blocking path)"
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


def window_problem(dead_after: float, beat_every: float, longest_call: float | None) -> str | None:
    """Why these windows would let the claim lie, in one line; None when they are sound."""
    if longest_call is None:
        return "the longest a call can stay in flight is not configured: select the claim with "
    if dead_after <= longest_call:
        return (
            f"a runner silent for {dead_after:g}s is taken for dead, but a call may stay in "
            f"flight for {longest_call:g}s (the task's HTTP timeout): the dead-after window must "
            "be longer (DEMO_DEAD_AFTER), or the timeout shorter (DEMO_CALL_TIMEOUT)"
        )
    if beat_every * FEWEST_BEATS > dead_after:
        return (
            f"runners beat every {beat_every:g}s (atomic_service_check_interval_minutes), "
            f"fewer than {FEWEST_BEATS} times in the {dead_after:g}s dead-after window: a live "
            "runner would be taken for dead (is PYNENC__ATOMIC_SERVICE_CHECK_INTERVAL_MINUTES "
            "or [tool.pynenc] overriding it?)"
        )
    return None


def resolved_problem(app: "Pynenc") -> str | None:
    """window_problem for the configuration pynenc resolved, overrides included."""
    longest = (app.config_values or {}).get(LONGEST_CALL_KEY)
    why = window_problem(
        app.conf.runner_considered_dead_after_minutes * 60,
        app.conf.atomic_service_check_interval_minutes * 60,
        None if longest is None else float(longest),
    )
    if why and longest is None:
        why += "atomic_claim.install(builder, backend, dead_after, longest_call)"
    return why


def exit_unless_sound(program: str, app: "Pynenc", wanted: bool) -> None:
    """Refuse to start, in one line and exit 2, a claim the resolved configuration makes lie.

    wanted: the claim was asked for (DEMO_ATOMIC_CLAIM=1); then pynenc must have resolved one of
    this module's orchestrators, whatever PYNENC__ORCHESTRATOR_CLS or [tool.pynenc] say.
    """
    resolved = app.conf.orchestrator_cls
    try:
        if wanted and resolved not in ORCHESTRATORS.values():
            raise Refused(
                f"the atomic claim was asked for, but pynenc's configuration resolves "
                f"orchestrator_cls={resolved!r} (PYNENC__ORCHESTRATOR_CLS and [tool.pynenc] "
                "rank above the builder): remove that override, or drop DEMO_ATOMIC_CLAIM"
            )
        if resolved in ORCHESTRATORS.values():
            backend = next(b for b, name in ORCHESTRATORS.items() if name == resolved)
            check_versions(backend)
            if why := resolved_problem(app):
                raise Refused(f"atomic claim: {why}")
    except SystemExit as refused:
        print(f"{program}: {refused}", file=sys.stderr)
        raise SystemExit(2) from None


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


def install(
    builder: "PynencBuilder", backend: str, dead_after: float, longest_call: float
) -> "PynencBuilder":
    """Select the claiming orchestrator for backend, a dead-runner window of dead_after seconds,
    and the longest a call can stay in flight (the task's timeout), which the window must exceed.

    Call it after .sqlite() or .redis(), which set pynenc's stock orchestrator. Versions and
    windows are checked once pynenc has resolved its configuration: exit_unless_sound.
    """
    beat_every = dead_after / BEATS_PER_WINDOW
    return builder.custom_config(
        orchestrator_cls=ORCHESTRATORS[backend],
        runner_considered_dead_after_minutes=dead_after / 60,
        # A runner writes its heartbeat when it checks the atomic services.
        atomic_service_check_interval_minutes=beat_every / 60,
        **{LONGEST_CALL_KEY: longest_call},
    )


def token(app: "Pynenc") -> int | None:
    """The fencing token of the invocation running in this thread; None without the claim."""
    invocation = context.get_dist_invocation_context(app.app_id)
    lookup = getattr(app.orchestrator, "fence_token", None)
    return lookup(invocation.invocation_id) if invocation and lookup else None


def fence_key(key: dict[str, str]) -> str:
    """One token sequence per key value, whichever task claims it: the provider protects the
    account, not the task."""
    return json.dumps(key, sort_keys=True)


class AtomicClaim:
    """The backend-independent half: the loop that claims, and what a claim decides."""

    app: Any
    BACKEND: str

    def __init__(self, app: "Pynenc") -> None:
        # Wherever pynenc builds this class (by name, from any configuration): the same guard.
        check_versions(self.BACKEND)
        if why := resolved_problem(app):
            raise Refused(f"atomic claim: {why}")
        super().__init__(app)  # type: ignore[call-arg]
        self._next_sweep = 0.0

    def get_invocations_to_run(
        self, max_num_invocations: int, runner_ctx: "RunnerContext", *args: Any, **kwargs: Any
    ) -> Iterator["DistributedInvocation"]:
        self.recover_silent_runners(runner_ctx)
        yield from super().get_invocations_to_run(  # type: ignore[misc]
            max_num_invocations, runner_ctx, *args, **kwargs
        )

    def recover_silent_runners(self, runner_ctx: "RunnerContext") -> None:
        """At most once per beat: RUNNING invocations whose runner has been silent for the whole
        dead-after window go back on the queue, through pynenc's own recovery statuses.

        pynenc runs the same recovery on a cron (every 15 minutes by default): a killed worker's
        last call for an account would wait that long when nothing else for the account comes.
        """
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.app.conf.atomic_service_check_interval_minutes * 60
        for invocation_id in self.get_running_invocations_for_recovery():  # type: ignore[attr-defined]
            try:
                self.set_invocation_status(invocation_id, S.RUNNING_RECOVERY, runner_ctx)  # type: ignore[attr-defined]
                self.reroute_invocations({invocation_id}, runner_ctx)  # type: ignore[attr-defined]
            except InvocationStatusError:
                continue  # another runner recovered it first, or its own runner finished it
            self.app.logger.warning(f"invocation:{invocation_id} recovered from a dead runner")

    def claim_in_store(
        self, invocation: "DistributedInvocation", runner_id: str, alive_since: float, busy: Verdict
    ) -> Decision:  # pragma: no cover - each backend overrides it
        raise NotImplementedError

    def fence_token(self, invocation_id: str) -> int | None:  # pragma: no cover - per backend
        raise NotImplementedError

    def get_additional_invocations_to_run(
        self,
        missing_invocations: int,
        blocking_invocation_ids: set["InvocationId"],
        invocations_to_reroute: set["InvocationId"],
        runner_ctx: "RunnerContext",
        *queue_hooks: Callable,
    ) -> Iterator["DistributedInvocation"]:
        """pynenc's loop, with check-then-claim replaced by claim (queue_hooks: pynenc 0.4.0).

        An invocation that can neither run nor wait (a RETRY on a busy key) goes back on the
        queue only once the pass is over: putting it back at once would hand it straight back
        to this loop, which would spin on it until the key frees.
        """
        retrieve = self._retriever(*queue_hooks)
        requeue: list[str] = []
        try:
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
                elif verdict is Verdict.REQUEUE:
                    requeue.append(invocation_id)
        finally:
            for invocation_id in requeue:
                self._route(invocation_id)

    def get_blocking_invocations_to_run(
        self,
        max_num_invocations: int,
        blocking_invocation_ids: set["InvocationId"],
        runner_ctx: "RunnerContext",
    ) -> Iterator["InvocationId"]:
        """Invocations others wait for (blocking control) are claimed the same way.

        This path reads them from the blocking edges, not from the queue, where they also wait:
        one whose key is busy is left as it is, on the queue, as pynenc does.
        """
        for invocation_id in self.get_blocking_invocations(max_num_invocations):  # type: ignore[attr-defined]
            invocation = self.app.state_backend.get_invocation(invocation_id)
            if self.claim(invocation, runner_ctx, busy=Verdict.LEAVE) is Verdict.RUN:
                blocking_invocation_ids.add(invocation_id)
                yield invocation_id

    def claim(
        self,
        invocation: "DistributedInvocation",
        runner_ctx: "RunnerContext",
        busy: Verdict = Verdict.REROUTE,
    ) -> Verdict:
        """Check the key and claim in one atomic step; then record what was written."""
        alive_since = time.time() - self.app.conf.runner_considered_dead_after_minutes * 60
        decision = self.claim_in_store(invocation, runner_ctx.runner_id, alive_since, busy)
        for invocation_id, record in decision.writes:
            self._record(invocation_id, record, runner_ctx)
        for invocation_id in decision.recovered:
            self.app.logger.warning(f"invocation:{invocation_id} recovered from a dead runner")
            self._route(invocation_id)
        return decision.verdict

    def decide(
        self,
        invocation: "DistributedInvocation",
        current: InvocationStatusRecord,
        holders: Sequence[Holder],
        runner_id: str,
        alive_since: float,
        busy: Verdict = Verdict.REROUTE,
    ) -> Decision:
        """What to write, given the invocation's status and the key's holders, read atomically.

        busy: what a busy key means here: REROUTE (the task's own policy) or LEAVE.
        """
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
            if busy is Verdict.LEAVE:
                decision.verdict = Verdict.LEAVE
                return decision
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

    # A call that outlived its claim (a stalled runner, woken after its account was recovered
    # and handed on) must not store a result: pynenc stores it first, then is refused the status.

    def _still_holds(self, invocation_id: str, runner_ctx: "RunnerContext") -> bool:
        record = self.get_invocation_status_record(invocation_id)  # type: ignore[attr-defined]
        if record.status is S.RUNNING and record.runner_id == runner_ctx.runner_id:
            return True
        self.app.logger.warning(
            f"invocation:{invocation_id} outlived its claim (now {record.status.value}, "
            f"runner {record.runner_id}): its outcome is not stored"
        )
        return False

    def set_invocation_result(
        self, invocation: "DistributedInvocation", result: Any, runner_ctx: "RunnerContext"
    ) -> None:
        if self._still_holds(invocation.invocation_id, runner_ctx):
            super().set_invocation_result(invocation, result, runner_ctx)  # type: ignore[misc]

    def set_invocation_exception(
        self,
        invocation: "DistributedInvocation",
        exception: Exception,
        runner_ctx: "RunnerContext",
    ) -> None:
        if self._still_holds(invocation.invocation_id, runner_ctx):
            super().set_invocation_exception(invocation, exception, runner_ctx)  # type: ignore[misc]

    def set_invocation_retry(
        self, invocation_id: "InvocationId", exception: Exception, runner_ctx: "RunnerContext"
    ) -> None:
        if self._still_holds(invocation_id, runner_ctx):
            super().set_invocation_retry(invocation_id, exception, runner_ctx)  # type: ignore[misc]

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

    BACKEND = "sqlite"

    def _init_tables(self) -> None:
        super()._init_tables()
        prefix = self.tables.table_prefix
        # Named under the orchestrator's prefix, so pynenc's purge clears them with the rest.
        self.fence_counters, self.fence_tokens = f"{prefix}_fence_counters", f"{prefix}_fences"
        self.claim_stats = f"{prefix}_claim_stats"
        with closing(create_sqlite_connection(self.sqlite_db_path)) as conn, conn:
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self.fence_counters} "
                "(fence_key TEXT PRIMARY KEY, token INTEGER NOT NULL)"
            )
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self.fence_tokens} "
                "(invocation_id TEXT PRIMARY KEY, token INTEGER NOT NULL)"
            )
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self.claim_stats} "
                "(name TEXT PRIMARY KEY, value INTEGER NOT NULL)"
            )

    def _begin(self, conn: Any) -> None:
        """Take the database's write lock: every other claimer waits here until we commit."""
        conn.execute("BEGIN IMMEDIATE")

    def claim_in_store(
        self, invocation: "DistributedInvocation", runner_id: str, alive_since: float, busy: Verdict
    ) -> Decision:
        inv_id = invocation.invocation_id
        key = self.key_arguments(invocation)
        with closing(create_sqlite_connection(self.sqlite_db_path)) as conn, conn:
            self._begin(conn)
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
            decision = self.decide(invocation, current, holders, runner_id, alive_since, busy)
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
                self._issue_token(conn, inv_id, fence_key(key))
            conn.execute(
                f"INSERT INTO {self.claim_stats} VALUES ('claims', 1) "
                "ON CONFLICT(name) DO UPDATE SET value = value + 1"
            )
            conn.commit()
        return decision

    def _issue_token(self, conn: Any, invocation_id: str, key: str) -> None:
        """The key's next fencing token, written with the claim itself."""
        (issued,) = conn.execute(
            f"INSERT INTO {self.fence_counters} VALUES (?, 1) "
            "ON CONFLICT(fence_key) DO UPDATE SET token = token + 1 RETURNING token",
            (key,),
        ).fetchone()
        conn.execute(
            f"INSERT OR REPLACE INTO {self.fence_tokens} VALUES (?, ?)", (invocation_id, issued)
        )

    def fence_token(self, invocation_id: str) -> int | None:
        with closing(create_sqlite_connection(self.sqlite_db_path)) as conn:
            row = conn.execute(
                f"SELECT token FROM {self.fence_tokens} WHERE invocation_id = ?", (invocation_id,)
            ).fetchone()
        return None if row is None else int(row[0])

    def claim_counts(self) -> dict[str, int]:
        """Claims made so far; a SQLite claim waits for the write lock, so it never retries."""
        with closing(create_sqlite_connection(self.sqlite_db_path)) as conn:
            row = conn.execute(
                f"SELECT value FROM {self.claim_stats} WHERE name = 'claims'"
            ).fetchone()
        return {"claims": int(row[0]) if row else 0, "retries": 0}

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
        """Redis: WATCH the invocation, the PENDING and RUNNING sets and the key's token, then
        MULTI/EXEC.

        Any claim, start or finish elsewhere changes a watched set, so EXEC fails and the
        whole read-decide-write is tried again on fresh data: the check and the claim are one
        step. The retries are bounded and spaced out; a claim that still cannot get through
        puts its invocation back on the queue.
        """

        BACKEND = "redis"
        attempts = REDIS_ATTEMPTS

        def _transaction[T](
            self, step: Callable[["Pipeline"], T], *watched: str
        ) -> tuple[T | None, int]:
            """step(pipe) under WATCH, then EXEC; again on a WatchError, after a growing pause.

            Returns step's value and how many tries failed; (None, attempts) when none got
            through.
            """
            first, longest = BACKOFF_SECONDS
            for attempt in range(self.attempts):
                with self.client.pipeline() as pipe:
                    try:
                        pipe.watch(*watched)
                        value = step(pipe)
                        pipe.execute()
                        return value, attempt
                    except WatchError:
                        pause = min(longest, first * 2**attempt)
                        time.sleep(random.uniform(pause / 2, pause))
            return None, self.attempts

        def _stats_key(self) -> str:
            return f"{self.key.prefix}:claim_stats"

        def _fence_counter(self, key: dict[str, str]) -> str:
            return f"{self.key.prefix}:fence:{fence_key(key)}"

        def _fence_tokens(self) -> str:
            return f"{self.key.prefix}:fences"

        def claim_in_store(
            self,
            invocation: "DistributedInvocation",
            runner_id: str,
            alive_since: float,
            busy: Verdict,
        ) -> Decision:
            inv_id = invocation.invocation_id
            key = self.key_arguments(invocation)
            task_key = invocation.task.task_id.key
            held_sets = [self.key.status_to_invocations(s) for s in HELD]
            counter = None if key is None else self._fence_counter(key)

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
                issued = int(pipe.get(counter) or 0) + 1 if counter else None
                decision = self.decide(invocation, current, holders, runner_id, alive_since, busy)
                pipe.multi()
                previous = {h.invocation_id: h.record.status for h in holders}
                previous[inv_id] = current.status
                for invocation_id, record in decision.writes:
                    self._write_status(pipe, invocation_id, previous[invocation_id], record)
                    previous[invocation_id] = record.status
                if decision.verdict is Verdict.RUN and key is not None and counter:
                    for arg, value in invocation.call.serialized_arguments.items():
                        pipe.sadd(self.key.args(task_key, arg, value), inv_id)
                    pipe.set(counter, issued)
                    pipe.hset(self._fence_tokens(), inv_id, issued)
                return decision

            watched = [self.key.invocation_to_status(inv_id), *held_sets]
            decision, failed = self._transaction(step, *watched, *([counter] if counter else []))
            with self.client.pipeline(transaction=False) as pipe:
                pipe.hincrby(self._stats_key(), "claims", 1)
                pipe.hincrby(self._stats_key(), "retries", failed)
                pipe.execute()
            if decision is None:
                self.app.logger.warning(
                    f"invocation:{inv_id} back to the queue, unclaimed: its watched keys "
                    f"changed on all {failed} tries"
                )
                return Decision(Verdict.REQUEUE)
            return decision

        def fence_token(self, invocation_id: str) -> int | None:
            issued = self.client.hget(self._fence_tokens(), invocation_id)
            return None if issued is None else int(issued)

        def claim_counts(self) -> dict[str, int]:
            """Claims made so far, and how many of their tries a WATCH conflict sent back."""
            raw = self.client.hgetall(self._stats_key())
            counts = {k.decode(): int(v) for k, v in raw.items()}
            return {"claims": counts.get("claims", 0), "retries": counts.get("retries", 0)}

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

            new, failed = self._transaction(step, self.key.invocation_to_status(invocation_id))
            if new is None:
                raise StatusContention(f"invocation:{invocation_id} changed on all {failed} tries")
            return new

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
