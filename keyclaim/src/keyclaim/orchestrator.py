"""The claiming orchestrator's shared half: pynenc's loop with check-then-claim made one step.

What it replaces in pynenc (0.3.1 and 0.4.0). `BaseOrchestrator.get_additional_invocations_to_run`
asks `is_candidate_to_run_by_concurrency_control` whether an invocation with the same key is
PENDING or RUNNING, and only then moves its own invocation to PENDING, in a separate write: two
runner processes can both read "free" and both run. A blocked invocation is written
CONCURRENCY_CONTROLLED, then REROUTED, and sent to the back of the queue, so every runner cycle
walks every busy account's whole backlog: one hot account delays all the others, and its own
calls run in no particular order. A drop on a REROUTED invocation is refused
(`InvocationStatusTransitionError`) and ends the runner loop.

What it does. Each key has at most one *holder*: the one invocation that may be on the queue,
pending or running (or up to N, one per slot, when its task declares so: keyclaim.limits). A
call for a busy key waits in the key's *line*, in arrival order, off the queue:
- registering a call either makes it the holder and queues it, or parks it at the end of its
  line (tasks that drop blocked calls are queued as usual, to be dropped when claimed);
- claiming a call reads its status and the key's holder, and in the same step writes PENDING
  with the key's next fencing token, parks it, or drops it;
- the holder's final status (success, failure, a drop) hands the key to the head of its line
  and queues it, in the same step as the status write.
A parked call keeps its status (REGISTERED, for a new one), so `registration_concurrency` still
merges duplicates into it. A declared rate is admitted in the claim's step too: a call whose
key's window is spent keeps its slot, off the queue, until its due time. No lock or service
outside pynenc's own store.

Faults. A holder whose runner has sent no heartbeat for the dead-after window is recovered
through pynenc's own statuses (RUNNING_RECOVERY, REROUTED) and queued again: it keeps the key
and runs before the calls behind it. A runner that was only stalled may still finish that call,
so the task sends the claim's fencing token (`keyclaim.token(app)`) and the provider refuses a
call older than the newest it has seen for the key; an outcome that comes back after its claim
was taken away is not stored. Liveness is judged on the store's clock (keyclaim.clock).

The upstream change that retires it: per-key holders and lines in `BaseOrchestrator`
(`claim_for_run`, park at registration, hand-over on a final status), fencing tokens, outcomes
stored only while the claim holds, and REROUTED -> CONCURRENCY_CONTROLLED_FINAL allowed in
`pynenc/invocation/status.py` (the repo's docs/upstream.md writes it out).
"""

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from pynenc import context
from pynenc.invocation.status import InvocationStatus, InvocationStatusRecord

from keyclaim import config, decision, fleet, limits, versions
from keyclaim.clock import EVER
from keyclaim.decision import Decision, Holder, Verdict
from keyclaim.errors import Refused
from keyclaim.keys import key_arguments, waits_in_line
from keyclaim.store import ClaimStore
from keyclaim.tokens import SLOT_ATTRIBUTE, TOKEN_ATTRIBUTE

if TYPE_CHECKING:
    from pynenc import Pynenc
    from pynenc.identifiers.invocation_id import InvocationId
    from pynenc.invocation.dist_invocation import DistributedInvocation
    from pynenc.runner.runner_context import RunnerContext

# A due time is looked at this much after it: the store's clock (SQLite: /proc/uptime, to the
# hundredth) must have passed it when the waiting call is released.
DUE_MARGIN = 0.01
S = InvocationStatus


class AtomicClaim(ClaimStore):
    """The backend-independent half: the loop that claims, the sweep, and what is recorded.
    Mixed in before pynenc's own orchestrator of the backend (keyclaim.sqlite_claim,
    keyclaim.redis_claim), which implements the ClaimStore steps."""

    app: Any
    BACKEND: str

    def __init__(self, app: "Pynenc") -> None:
        # Wherever pynenc builds this class (by name, from any configuration): the same guard.
        versions.check("atomic claim", self.BACKEND)
        if why := config.resolved_problem(app):
            raise Refused(f"atomic claim: {why}")
        super().__init__(app)  # type: ignore[call-arg]
        self._next_sweep = 0.0
        self._unqueued_seen: set[str] = set()
        self._stuck_seen: set[str] = set()
        # When (time.monotonic()) a call this process saw wait for its rate may go: then this
        # process releases every due call (release_due). A process that dies before it does
        # leaves them to any worker's sweep.
        self._due_at: float | None = None
        self._on_queued: list[Callable[[], None]] = []
        self._fleet_checked = False

    # Liveness, on the store's clock, for pynenc too: its recovery tasks and its list of active
    # runners ask these, and each asked the runner's own wall clock.

    def register_runner_heartbeats(self, runner_ids: list[str], *args: Any, **kwargs: Any) -> None:
        """pynenc's beat, and the claim's on the store's clock (pynenc 0.4.0 adds the queues
        a runner consumes: passed on as they come). The runner this process runs joins the
        fleet with its first beat, before it claims anything: pynenc's own runners too, which
        know nothing of the fleet (the library's joined as they started)."""
        runner = context.get_current_runner(self.app.app_id)
        if runner is not None and runner.runner_id in runner_ids:
            fleet.join_fleet(self.app, runner.runner_id)  # Refused: pynenc's loop ends on it
        super().register_runner_heartbeats(runner_ids, *args, **kwargs)  # type: ignore[misc]
        self.beat_in_store(list(runner_ids))
        fleet.beat(self.app, list(runner_ids))

    def stock_active_runners(self, timeout_seconds: float) -> Any:
        """pynenc's own list of active runners, on each runner's wall clock (keyclaim.fleet)."""
        return super()._get_active_runners(timeout_seconds, None)  # type: ignore[misc]

    def _get_active_runners(
        self, timeout_seconds: float, can_run_atomic_service: Any = None
    ) -> Any:
        known = super()._get_active_runners(EVER, can_run_atomic_service)  # type: ignore[misc]
        silent = self.silent_runners({r.runner_id for r in known}, timeout_seconds)
        return [r for r in known if r.runner_id not in silent]

    def _get_running_invocations_for_recovery(self, timeout_seconds: float) -> Iterator[Any]:
        runners = {}
        for invocation_id in super()._get_running_invocations_for_recovery(-EVER):  # type: ignore[misc]
            try:
                runners[invocation_id] = self._record_of(invocation_id).runner_id or ""
            except KeyError:
                continue  # purged meanwhile
        silent = self.silent_runners(set(runners.values()), timeout_seconds, adopt=True)
        return iter([i for i, runner in runners.items() if runner in silent])

    def get_pending_invocations_for_recovery(self) -> Iterator[Any]:
        return iter(self.pending_too_long(self.app.conf.max_pending_seconds))

    def _record_of(self, invocation_id: str) -> InvocationStatusRecord:
        """The invocation's status record (a backend may read it more cheaply than pynenc)."""
        return self.get_invocation_status_record(invocation_id)  # type: ignore[attr-defined]

    def admits(self, invocation: "DistributedInvocation", holders: list[Holder]) -> bool:
        """Queue a new call (True) or park it (False), given its key's holders, read atomically:
        a call that waits when blocked is queued only when its key has a free slot (the line is
        then empty: a slot that frees goes to the head of the line in the same step)."""
        return not waits_in_line(invocation) or len(holders) < limits.of(invocation).slots

    # The producer: park at registration.

    def register_new_invocations(self, invocations: list["DistributedInvocation"]) -> None:
        """pynenc's registration, with its routing replaced: a keyed call is queued only if it
        becomes its key's holder; otherwise it is parked in its line. Batches (parallelize)
        go the same way, so their keys are indexed too."""
        if not self._fleet_checked and fleet.joined(self.app) is None:
            # A producer: refused before its first call if it parks or admits calls otherwise
            # than a live worker would. A worker was checked as it joined.
            if why := fleet.fleet_problem(self.app, only=fleet.PRODUCER_SETTINGS):
                raise Refused(why)
            self._fleet_checked = True
        runner_ctx = context.get_or_create_runner_context(self.app.app_id)
        self.app.state_backend.upsert_invocations(invocations)
        record = self._register_new_invocations(invocations, runner_ctx.runner_id)  # type: ignore[attr-defined]
        ids = [invocation.invocation_id for invocation in invocations]
        self.app.state_backend.add_histories(invocations, record, runner_ctx)
        self.app.trigger.report_tasks_status(ids, record.status)
        for invocation in invocations:
            if key_arguments(invocation) is None:
                self._route(invocation.invocation_id)
                where = "ROUTED"
            else:
                where = "ROUTED" if self.admit_in_store(invocation) else "PARKED in its line"
            self.app.logger.info(f"NEW invocation:{invocation.invocation_id} REGISTERED, {where}")

    # The workers: claim.

    def get_invocations_to_run(
        self, max_num_invocations: int, runner_ctx: "RunnerContext", *args: Any, **kwargs: Any
    ) -> Iterator["DistributedInvocation"]:
        self.recover_silent_runners(runner_ctx)
        if self._due_at is not None and time.monotonic() >= self._due_at:
            self.release_due()
        yield from super().get_invocations_to_run(  # type: ignore[misc]
            max_num_invocations, runner_ctx, *args, **kwargs
        )

    def recover_silent_runners(self, runner_ctx: "RunnerContext") -> None:
        """At most once per beat: what pynenc's recovery tasks do, each invocation in one step
        (RUNNING under a runner silent for the dead-after window, or PENDING for longer than
        max_pending_seconds: rerouted and queued again), then the keys' holders are healed.

        pynenc runs its recovery on a cron (every 15 and every 5 minutes by default), in two
        writes; a call behind a lost holder waits in its line, never claimed, meanwhile.
        """
        now = time.monotonic()
        if now < self._next_sweep:
            return
        beat = self.app.conf.atomic_service_check_interval_minutes * 60
        self._next_sweep = now + beat
        dead_after = self.app.conf.runner_considered_dead_after_minutes * 60
        max_pending = self.app.conf.max_pending_seconds
        lost = [
            *self.get_running_invocations_for_recovery(),  # type: ignore[attr-defined]
            *self.get_pending_invocations_for_recovery(),  # type: ignore[attr-defined]
        ]
        self.release_due()  # calls whose rate window freed, whoever was to release them
        for invocation_id in lost:
            records = self.recover_in_store(
                invocation_id, runner_ctx.runner_id, dead_after, max_pending
            )
            for record in records:
                self._record(invocation_id, record, runner_ctx)
            if records:
                self.app.logger.warning(f"invocation:{invocation_id} recovered from a dead runner")
        self.heal_holders(runner_ctx)

    def heal_holders(self, runner_ctx: "RunnerContext") -> None:
        """A holder that can no longer pass its key on gets it moving again.

        - It ended without handing the key on (a process without the claim finished it).
        - It is stuck between two of pynenc's statuses (KILLED, a recovery), seen so on two
          sweeps in a row (a beat apart, on this process's own clock: no other clock is read):
          the process that was moving it died in between.
        - It waits to be claimed but is on no queue: a worker took it off the queue and died
          before claiming it. A holder on its way from the queue to its claim looks the same
          for a moment, so it is queued again only when seen so on two sweeps in a row.
        """
        ended_or_stuck, unqueued = self.holders_to_heal()
        again = [i for i in unqueued if i in self._unqueued_seen]
        stuck = {i for i in ended_or_stuck if i in self._stuck_seen}
        self._unqueued_seen, self._stuck_seen = set(unqueued), set(ended_or_stuck)
        todo = [*((i, False) for i in ended_or_stuck), *((i, True) for i in again)]
        for invocation_id, requeue in todo:
            records = self.heal_in_store(
                invocation_id, runner_ctx.runner_id, invocation_id in stuck, requeue
            )
            for record in records:
                self._record(invocation_id, record, runner_ctx)
            self.app.logger.warning(f"invocation:{invocation_id} holds its key again")

    def get_additional_invocations_to_run(
        self,
        missing_invocations: int,
        blocking_invocation_ids: set["InvocationId"],
        invocations_to_reroute: set["InvocationId"],
        runner_ctx: "RunnerContext",
        *queue_hooks: Callable,
    ) -> Iterator["DistributedInvocation"]:
        """pynenc's loop, with check-then-claim replaced by claim (queue_hooks: pynenc 0.4.0).

        A blocked call is parked, not sent round the queue again: the queue holds only calls
        that can run now. One the store could not decide goes back on the queue once the pass
        is over, never into the same pass.
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

        This path reads them from the blocking edges, not from the queue or a line, where
        they also wait: one whose key is busy is left where it is.
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
        busy: Verdict = Verdict.PARK,
    ) -> Verdict:
        """Check the key and claim in one atomic step; then record what was written."""
        dead_after = self.app.conf.runner_considered_dead_after_minutes * 60
        decision = self.claim_in_store(invocation, runner_ctx.runner_id, dead_after, busy)
        for invocation_id, record in decision.writes:
            self._record(invocation_id, record, runner_ctx)
        for recovered in decision.recovered:
            self.app.logger.warning(f"invocation:{recovered} recovered from a dead runner")
        if decision.verdict is Verdict.PARK:
            self.app.logger.info(f"invocation:{invocation.invocation_id} waits in its key's line")
        if decision.verdict is Verdict.WAIT and decision.due_in is not None:
            self.app.logger.info(
                f"invocation:{invocation.invocation_id} waits {decision.due_in:.3f}s for its "
                "key's rate window"
            )
            self._wake_in(decision.due_in)
        if decision.token is not None:
            setattr(invocation, TOKEN_ATTRIBUTE, decision.token)
            setattr(invocation, SLOT_ATTRIBUTE, decision.slot)
        return decision.verdict

    # A call that waits for its rate: off the queue, holding its slot, until its due time.
    # Nothing polls for it: the process that saw it wait releases it at its time (the wake
    # runner's loop waits exactly that long), and any worker's sweep does if that one died.

    def _wake_in(self, seconds: float) -> None:
        at = time.monotonic() + max(0.0, seconds) + DUE_MARGIN
        self._due_at = at if self._due_at is None else min(self._due_at, at)

    def until_due(self) -> float | None:
        """Seconds until this process must release a waiting call; None: none is waiting."""
        return None if self._due_at is None else max(0.0, self._due_at - time.monotonic())

    def on_queued(self, wake: Callable[[], None]) -> None:
        """Call wake() whenever this process put a key's next call on the queue: a hand-over
        at a call's end, or a release at a due time (the wake runner's loop wakes)."""
        self._on_queued.append(wake)

    def wake_now(self) -> None:
        for wake in self._on_queued:
            wake()

    def release_due(self) -> list[str]:
        """In one step: every call whose rate window has freed goes back on the queue."""
        self._due_at = None
        released, next_in = self.release_due_in_store()
        if next_in is not None:
            self._wake_in(next_in)
        if released:
            self.wake_now()
        return released

    def decide(
        self,
        invocation: "DistributedInvocation",
        current: InvocationStatusRecord,
        holder: Holder | list[Holder] | None,
        runner_id: str,
        alive_since: float,
        busy: Verdict = Verdict.PARK,
        free_at: float | None = None,
    ) -> Decision:
        """keyclaim.decision.decide, for this invocation and its task's keyclaim.limit (a seam
        the race tests pause at)."""
        waits, slots = waits_in_line(invocation), limits.of(invocation).slots
        return decision.decide(
            invocation.invocation_id,
            current,
            holder,
            runner_id,
            alive_since,
            waits,
            busy,
            slots,
            free_at,
        )

    def is_authorize_to_run_by_concurrency_control(self, invocation: Any) -> bool:
        """pynenc checks the key again just before RUNNING (a query per call); the claim gave
        this invocation its key, and only a key's holder is ever claimed."""
        return True

    # An outcome that comes back after its claim was taken away (a stalled runner, woken after
    # its call was recovered and run again) must not be stored: pynenc stores it first, and only
    # then is refused the status.

    def _still_holds(
        self, invocation_id: str, runner_ctx: "RunnerContext", attempt: object = None
    ) -> bool:
        """Whether the outcome of this attempt may be stored: the invocation is RUNNING under
        this runner and, when the attempt carries the token its claim issued, under that
        claim. A runner taken for dead may take its own recovered invocation back: the cut
        attempt's outcome then comes under the same runner, and only the token tells it from
        the attempt running now."""
        try:
            record = self._record_of(invocation_id)
        except KeyError:  # the store lost it (a Redis emptied): nothing to store it into
            self.app.logger.warning(f"invocation:{invocation_id} is gone from the store")
            return False
        issued = getattr(attempt, TOKEN_ATTRIBUTE, None)
        newest = None if issued is None else self.fence_token(invocation_id)
        if (
            record.status is S.RUNNING
            and record.runner_id == runner_ctx.runner_id
            and newest in (None, issued)
        ):
            return True
        self.app.logger.warning(
            f"invocation:{invocation_id} outlived its claim (now {record.status.value}, "
            f"runner {record.runner_id}, token {newest}): its outcome is not stored"
        )
        return False

    def set_invocation_result(
        self, invocation: "DistributedInvocation", result: Any, runner_ctx: "RunnerContext"
    ) -> None:
        if self._still_holds(invocation.invocation_id, runner_ctx, invocation):
            super().set_invocation_result(invocation, result, runner_ctx)  # type: ignore[misc]

    def set_invocation_exception(
        self,
        invocation: "DistributedInvocation",
        exception: Exception,
        runner_ctx: "RunnerContext",
    ) -> None:
        if self._still_holds(invocation.invocation_id, runner_ctx, invocation):
            super().set_invocation_exception(invocation, exception, runner_ctx)  # type: ignore[misc]

    def set_invocation_retry(
        self, invocation: Any, exception: Exception, runner_ctx: "RunnerContext"
    ) -> None:
        """invocation: its id (pynenc 0.3.1), or the invocation itself (0.4.0)."""
        invocation_id = getattr(invocation, "invocation_id", invocation)
        if self._still_holds(invocation_id, runner_ctx, invocation):
            super().set_invocation_retry(invocation, exception, runner_ctx)  # type: ignore[misc]

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
        """Put an invocation on its queue (pynenc 0.4.0 routes by the task's queue)."""
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
