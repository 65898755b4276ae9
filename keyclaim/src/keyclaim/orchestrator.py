"""The claiming orchestrator's shared half: pynenc's loop with check-then-claim made one step.

Written against pynenc 0.3.1 and 0.4.0, whose `get_additional_invocations_to_run` asks whether
a key is free, then moves the invocation to PENDING in a second write (two runners can both
read "free"), and sends a blocked one round the queue again, so one busy key's backlog delays
every other key. Here a key has up to N holders (one per slot) and a line of waiting calls off
the queue: registering a call queues or parks it, a claim reads and writes in one step of the
store (with the slot's fencing token and the key's rate), and a holder's final status hands
its slot to the head of the line in the same step (keyclaim/README.md). A parked call keeps its
status, so `registration_concurrency` still merges into it. Faults, liveness and calls waiting
for their rate: keyclaim.recovery.

The upstream change that retires it: per-key holders and lines in `BaseOrchestrator`
(`claim_for_run`, park at registration, hand-over on a final status), fencing tokens, outcomes
stored only while the claim holds, and REROUTED -> CONCURRENCY_CONTROLLED_FINAL allowed in
`pynenc/invocation/status.py` (the repo's docs/upstream.md).
"""

import itertools
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from typing import TYPE_CHECKING, Any

from pynenc import context
from pynenc.call import Call
from pynenc.exceptions import InvocationStatusOwnershipError, InvocationStatusTransitionError
from pynenc.invocation.status import InvocationStatus, InvocationStatusRecord

from keyclaim import config, decision, fleet, keys, limits, outage, versions
from keyclaim.decision import Decision, Holder, Verdict
from keyclaim.errors import Refused
from keyclaim.handover import HandOver
from keyclaim.keys import key_arguments, waits_in_line
from keyclaim.recovery import ClaimRecovery
from keyclaim.tokens import SLOT_ATTRIBUTE, TOKEN_ATTRIBUTE

if TYPE_CHECKING:
    from pynenc import Pynenc
    from pynenc.identifiers.invocation_id import InvocationId
    from pynenc.invocation.dist_invocation import DistributedInvocation
    from pynenc.runner.runner_context import RunnerContext

S = InvocationStatus


class AtomicClaim(HandOver, ClaimRecovery):
    """The backend-independent half, mixed in before pynenc's own orchestrator of the backend
    (keyclaim.sqlite_claim, keyclaim.redis_claim), which implements the ClaimStore steps."""

    app: Any
    BACKEND: str

    def __init__(self, app: "Pynenc") -> None:
        # Wherever pynenc builds this class (by name, from any configuration): the same guard.
        versions.check("atomic claim", self.BACKEND)
        if why := config.resolved_problem(app):
            raise Refused(f"atomic claim: {why}")
        super().__init__(app)
        self._fleet_checked = False
        self._unstored: set[str] = set()  # calls left RUNNING here, unstored (_reroute_unstored)
        # Claimed here under a rate, not yet started: where each admission is kept (restamped).
        self._admitted: dict[str, tuple[str, str, float]] = {}
        self._started: set[str] = set()  # RUNNING stored with their claim: skipped once more

    def admits(self, invocation: "DistributedInvocation", holders: list[Holder]) -> bool:
        """Queue a new call (True) or park it (False), given its key's holders, read atomically:
        a call that waits when blocked is queued only into a free slot (the line is then empty)."""
        return not waits_in_line(invocation) or len(holders) < limits.of(invocation).slots

    # The producer: refuse a key too long before pynenc stores the call, park at registration.

    def route_call(self, call: Any) -> "DistributedInvocation":
        keys.refuse_long_keys([call])  # pynenc writes the invocation as it builds it
        return super().route_call(call)  # type: ignore[misc]

    def register_new_invocations(self, invocations: list["DistributedInvocation"]) -> None:
        """pynenc's registration (batches too), its routing replaced: a keyed call is queued
        only if it becomes one of its key's holders; otherwise it is parked in its line."""
        keys.refuse_long_keys(i.call for i in invocations)  # a batch's, a trigger's
        self._check_producer()
        runner_ctx = context.get_or_create_runner_context(self.app.app_id)
        self.app.state_backend.upsert_invocations(invocations)
        record = self._register_new_invocations(invocations, runner_ctx.runner_id)  # type: ignore[attr-defined]
        ids = [invocation.invocation_id for invocation in invocations]
        self.app.state_backend.add_histories(invocations, record, runner_ctx)
        self.app.trigger.report_tasks_status(ids, record.status)
        queued: list[float] = []  # each queued call's merge window (0: it may start now)
        for invocation in invocations:
            where, merge = "ROUTED", limits.of(invocation).merge
            if key_arguments(invocation) is None:
                self._route(invocation.invocation_id)
            elif not self.admit_in_store(invocation):
                where = "PARKED in its line"
            elif merge:
                where = f"open to merging for {merge:g}s, then due"
            if not where.startswith("PARKED"):
                queued.append(merge)
            self.app.logger.info(f"NEW invocation:{invocation.invocation_id} REGISTERED, {where}")
        if queued:  # one worker for each, wherever it runs, rather than at its next look
            self.notify(max(queued), len(queued))

    def route_calls(self, calls: list[Any]) -> list["DistributedInvocation"]:
        """pynenc's batch (`task.parallelize`), a keyed task's too: its pre-serialized calls
        cannot name their key, so each becomes a plain call with the same serialized arguments,
        and registration parks or queues each as one call would be."""
        plain = [Call(c.task, c.arguments, c.serialized_arguments) for c in calls]
        return super().route_calls(plain)  # type: ignore[misc]

    def _check_producer(self) -> None:
        """A producer, checked before its first call (a worker was checked as it joined)."""
        if not self._fleet_checked and fleet.joined(self.app) is None:
            if why := fleet.fleet_problem(self.app, only=fleet.PRODUCER_SETTINGS):
                raise Refused(why)
            self._fleet_checked = True

    # The workers: claim.

    def get_invocations_to_run(
        self, max_num_invocations: int, runner_ctx: "RunnerContext", *args: Any, **kwargs: Any
    ) -> Iterator["DistributedInvocation"]:
        self._reroute_unstored(runner_ctx)
        self.recover_silent_runners(runner_ctx)
        # A runner not woken by due times (no wake runner here) looks for them at each look.
        if not self._on_queued or (self._due_at is not None and time.monotonic() >= self._due_at):
            self.release_due()
        yield from super().get_invocations_to_run(  # type: ignore[misc]
            max_num_invocations, runner_ctx, *args, **kwargs
        )

    def get_additional_invocations_to_run(
        self,
        missing_invocations: int,
        blocking_invocation_ids: set["InvocationId"],
        invocations_to_reroute: set["InvocationId"],
        runner_ctx: "RunnerContext",
        *queue_hooks: Callable,
    ) -> Iterator["DistributedInvocation"]:
        """pynenc's loop, with check-then-claim replaced by claim (queue_hooks: pynenc 0.4.0).
        A blocked call is parked, not sent round the queue again; one the store could not
        decide goes back on the queue once the pass is over, never into the same pass."""
        retrieve = self._retriever(*queue_hooks)
        requeue: list[str] = []
        try:
            while missing_invocations > 0 and self._may_have_queued():
                with self._one():  # off the queue and claimed in one step, where the store can
                    if not (invocation_id := retrieve()):
                        break
                    if invocation_id in blocking_invocation_ids:
                        continue
                    invocation = self.app.state_backend.get_invocation(invocation_id)
                    verdict = self.claim(invocation, runner_ctx)
                    if verdict is Verdict.RUN and self._starts_in_step(invocation_id):
                        self._start_in_step(invocation_id, runner_ctx)
                if verdict is Verdict.RUN:  # started by the runner once the step is committed
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
        """Invocations others wait for (blocking control), claimed the same way; read from the
        blocking edges, not the queue or a line, one whose key is busy is left where it is."""
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
        if decision.admitted is not None:
            self._admitted[invocation.invocation_id] = decision.admitted
        return decision.verdict

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
        """keyclaim.decision.decide with the task's limit (a seam the race tests pause at)."""
        inv_id, waits = invocation.invocation_id, waits_in_line(invocation)
        slots = limits.of(invocation).slots
        return decision.decide(
            inv_id, current, holder, runner_id, alive_since, waits, busy, slots, free_at
        )

    def is_authorize_to_run_by_concurrency_control(self, invocation: Any) -> bool:
        """pynenc checks the key again before RUNNING; only a key's holder is ever claimed."""
        return True

    # An outcome that comes back after its claim was taken away (a stalled runner, woken after
    # its call was recovered and run again) must not be stored: pynenc stores it first, and only
    # then is refused the status. And a store that does not answer is never the call's outcome:
    # each write below is tried again until it answers (keyclaim.outage).

    def _still_holds(self, attempt: Any, runner_ctx: "RunnerContext") -> bool:
        """Whether the outcome of this attempt (an invocation, or its id: pynenc 0.3.1's retry)
        may be stored: it is RUNNING under this runner and, when the attempt carries its
        claim's token, under that claim (a runner taken for dead may take its own recovered
        invocation back: only the token tells the cut attempt from the one running now)."""
        invocation_id = getattr(attempt, "invocation_id", attempt)
        try:
            record = self._record_of(invocation_id)
        except KeyError:  # the store lost it (a Redis emptied): nothing to store it into
            self.app.logger.warning(f"invocation:{invocation_id} is gone from the store")
            return False
        issued = getattr(attempt, TOKEN_ATTRIBUTE, None)
        newest = None if issued is None else self.fence_token(invocation_id)
        # A token gone with its final call is no match.
        if self._runs_here(record, runner_ctx) and newest == issued:
            return True
        self.app.logger.warning(
            f"invocation:{invocation_id} outlived its claim (now {record.status.value}, "
            f"runner {record.runner_id}, token {newest}): its outcome is not stored"
        )
        return False

    @staticmethod
    def _runs_here(record: InvocationStatusRecord, runner_ctx: "RunnerContext") -> bool:
        return record.status is S.RUNNING and record.runner_id == runner_ctx.runner_id

    def _until_answered(self, invocation_id: str, write: Callable[[], object]) -> None:
        """write(), tried again while the store does not answer, for up to the dead-after
        window: past it, a runner cut off from the store has had its claims recovered by the
        others anyway, and a call left unfinished is run again under its idempotency key."""
        dead_after = self.app.conf.runner_considered_dead_after_minutes * 60
        outage.retried(write, dead_after, self.app.logger, f"invocation:{invocation_id}")

    def _store_outcome(
        self,
        write: Callable,
        attempt: Any,
        outcome: Any,
        runner_ctx: "RunnerContext",
        then: Callable[[], object] = lambda: None,
    ) -> None:
        """write(attempt, outcome, runner_ctx), then then(), once the store answers, if the
        attempt still holds its claim. Never given up as FAILED: past the deadline the call
        stays RUNNING here, and this runner's loop reroutes it once the store answers
        (`_reroute_unstored`)."""
        invocation_id = getattr(attempt, "invocation_id", attempt)

        def stored() -> None:
            if self._still_holds(attempt, runner_ctx):
                write(attempt, outcome, runner_ctx)
                then()

        try:
            self._until_answered(invocation_id, stored)
        except outage.StoreDown as down:
            self._unfinished(invocation_id, down)

    def _unfinished(self, invocation_id: str, why: Exception) -> None:
        self._unstored.add(invocation_id)
        self.app.logger.warning(
            f"{why}: its outcome is not stored; it is run again (same idempotency key) once the "
            "store answers"
        )

    def _reroute_unstored(self, runner_ctx: "RunnerContext") -> None:
        """The calls whose outcome or start could not be stored, still RUNNING under this
        runner: through KILLED to the queue, as a drain does for a call that ended unstored
        (one that is PENDING is recovered by the sweep after `max_pending_seconds`)."""
        for invocation_id in list(self._unstored):
            # Gone from the store, or recovered by another runner since it was read here (this
            # one silent through the outage): nothing left to reroute.
            with suppress(
                KeyError, InvocationStatusTransitionError, InvocationStatusOwnershipError
            ):
                if self._runs_here(self._record_of(invocation_id), runner_ctx):
                    self.set_invocation_status(invocation_id, S.KILLED, runner_ctx)
                    self.reroute_invocations({invocation_id}, runner_ctx)
            self._unstored.discard(invocation_id)

    def set_invocation_status(
        self, invocation_id: "InvocationId", status: InvocationStatus, runner_ctx: "RunnerContext"
    ) -> None:
        """pynenc's, with its RUNNING write (before the call: no effect yet) tried again while
        the store does not answer; past the deadline, StoreDown, which is not stored FAILED.
        A call claimed under a rate counts from its RUNNING: its admission is dated again with
        it and after it, so the rate's grace covers only the way from its start to the provider."""
        write = super().set_invocation_status  # type: ignore[misc]
        admitted = self._admitted.pop(invocation_id, None)
        if status is S.RUNNING and invocation_id in self._started:
            self._started.discard(invocation_id)  # stored in the step that took it
            return
        if status is not S.RUNNING:
            write(invocation_id, status, runner_ctx)
            return
        tries = itertools.count()

        def start() -> None:
            # Dated before the RUNNING, so that no claim between the two misses it: while it is
            # PENDING it counts as admitted now (keyclaim.decision.rate_free_at).
            if admitted is not None:
                self.restamp_in_store(invocation_id, admitted)
            # A try whose answer was lost may have gone through: then it is RUNNING here.
            if not (next(tries) and self._runs_here(self._record_of(invocation_id), runner_ctx)):
                write(invocation_id, status, runner_ctx)
            # And after it: where the RUNNING is a write of its own (pynenc's SQLite
            # connections, Redis), waiting its turn for the lock took up to 42 ms at a load
            # of 5, past the grace. In one transaction with it (kept connections), one UPDATE.
            if admitted is not None:
                self.restamp_in_store(invocation_id, admitted)

        self._until_answered(invocation_id, start)

    def set_invocation_result(
        self, invocation: "DistributedInvocation", result: Any, runner_ctx: "RunnerContext"
    ) -> None:
        self._store_outcome(
            super().set_invocation_result,  # type: ignore[misc]
            invocation,
            result,
            runner_ctx,
            then=lambda: self._take_in_step(runner_ctx),
        )

    def set_invocation_exception(
        self, invocation: "DistributedInvocation", exception: Exception, runner_ctx: "RunnerContext"
    ) -> None:
        if isinstance(exception, outage.StoreDown):  # its start was never stored: not a verdict
            self._unfinished(invocation.invocation_id, exception)
        else:
            write = super().set_invocation_exception  # type: ignore[misc]
            self._store_outcome(write, invocation, exception, runner_ctx)

    def set_invocation_retry(
        self, invocation: Any, exception: Exception, runner_ctx: "RunnerContext"
    ) -> None:
        """invocation: its id (pynenc 0.3.1), or the invocation itself (0.4.0)."""
        self._store_outcome(super().set_invocation_retry, invocation, exception, runner_ctx)  # type: ignore[misc]

    def _may_have_queued(self) -> bool:
        """False only where the store can tell, without its write lock, that no call is queued."""
        return True

    def _dequeuer(self) -> Callable[..., "InvocationId | str | None"]:
        """How a call comes off the queue (0.4.0: of a queue by its name): pynenc's broker."""
        return self.app.broker.retrieve_invocation

    def _retriever(self, *queue_hooks: Callable) -> Callable[[], "InvocationId | str | None"]:
        dequeue = self._dequeuer()
        if not queue_hooks:
            return dequeue
        queue_provider, on_queue_retrieved = queue_hooks

        def retrieve() -> "InvocationId | str | None":
            for queue_name in queue_provider():
                if invocation_id := dequeue(queue_name):
                    on_queue_retrieved(queue_name)
                    return invocation_id
            return None

        return retrieve
