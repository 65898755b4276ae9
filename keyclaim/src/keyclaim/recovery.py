"""The claim's recovery: liveness on the store's clock, the sweep, and the calls that wait.

A holder whose runner has not beaten for the dead-after window is recovered through pynenc's
own statuses and queued again, keeping its key (a stalled runner's late call is refused by its
fencing token); a holder that can no longer pass its key on is healed; a call waiting for its
key's rate is released at its due time. Written against pynenc 0.3.1 and 0.4.0, whose recovery
runs on a cron, in two writes, on each runner's wall clock; retired with the claim.
"""

import time
from collections.abc import Callable, Iterator
from functools import cached_property
from typing import TYPE_CHECKING, Any

from pynenc import context
from pynenc.invocation.status import InvocationStatusRecord

from keyclaim import fleet, history, notify
from keyclaim.clock import EVER
from keyclaim.store import ClaimStore

if TYPE_CHECKING:
    from pynenc import Pynenc
    from pynenc.runner.runner_context import RunnerContext

# A due time is looked at this much after it: the store's clock (SQLite: /proc/uptime, to the
# hundredth) must have passed it when the waiting call is released.
DUE_MARGIN = 0.01


class ClaimRecovery(ClaimStore):
    """Liveness, the sweep and due times, for any backend's ClaimStore steps."""

    app: Any

    def __init__(self, app: "Pynenc") -> None:
        super().__init__(app)  # type: ignore[call-arg]
        self._next_sweep = 0.0
        self._unqueued_seen: set[str] = set()
        self._stuck_seen: set[str] = set()
        # When (time.monotonic()) a call this process saw wait for its rate may go: then it
        # releases every due call (release_due); if it dies first, any worker's sweep does.
        self._due_at: float | None = None
        self._on_queued: list[Callable[[], None]] = []

    # Liveness, on the store's clock, for pynenc too: its recovery tasks and its list of active
    # runners ask these, and each asked the runner's own wall clock.

    def register_runner_heartbeats(self, runner_ids: list[str], *args: Any, **kwargs: Any) -> None:
        """pynenc's beat (0.4.0 adds the runner's queues: passed on), and the claim's on the
        store's clock. This process's runner joins the fleet with its first beat, before it
        claims anything: pynenc's own runners too (the library's joined as they started)."""
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

    def recover_silent_runners(self, runner_ctx: "RunnerContext") -> None:
        """At most once per beat: what pynenc's recovery tasks do (on a cron, every 15 and 5
        minutes by default, in two writes), each invocation in one step (RUNNING under a silent
        runner, or PENDING too long: rerouted and queued again); then holders are healed."""
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.app.conf.atomic_service_check_interval_minutes * 60
        dead_after = self.app.conf.runner_considered_dead_after_minutes * 60
        max_pending = self.app.conf.max_pending_seconds
        lost = [
            *self.get_running_invocations_for_recovery(),  # type: ignore[attr-defined]
            *self.get_pending_invocations_for_recovery(),
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
        # A stopped worker's records: its beat once any call of it was recovered (a sweep ago).
        self.prune_in_store(2 * dead_after)
        fleet.prune(self.app)
        history.sweep(self.app)  # pynenc's records of long-finished invocations

    def heal_holders(self, runner_ctx: "RunnerContext") -> None:
        """A holder that can no longer pass its key on gets it moving again: one that ended
        without handing it on (a process without the claim finished it); one stuck between two
        of pynenc's statuses (KILLED, a recovery: its process died in between); one waiting to
        be claimed on no queue (a worker took it off and died). The last two only when seen so
        on two sweeps in a row, a beat apart on this process's clock: a holder on its way from
        the queue to its claim looks the same for a moment."""
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

    # A call that waits for its rate: off the queue, holding its slot, until its due time. Nothing
    # polls for it: the process that saw it wait releases it (the wake runner waits that long).

    def _wake_in(self, seconds: float) -> None:
        at = time.monotonic() + max(0.0, seconds) + DUE_MARGIN
        self._due_at = at if self._due_at is None else min(self._due_at, at)

    def until_due(self) -> float | None:
        """Seconds until this process must release a waiting call; None: none is waiting."""
        return None if self._due_at is None else max(0.0, self._due_at - time.monotonic())

    def on_queued(self, wake: Callable[[], None]) -> None:
        """Call wake() whenever this process queues a key's next call (hand-over, due time)."""
        self._on_queued.append(wake)

    def wake_now(self) -> None:
        for wake in self._on_queued:
            wake()

    @cached_property
    def wakes(self) -> "notify.RedisWakes | notify.SocketWakes":
        """How any process wakes a worker of the fleet (keyclaim.notify)."""
        return notify.channel(self)

    def notify(self, due_in: float, count: int) -> None:
        """Wake up to `count` idle workers, wherever they run, for calls queued (or due in
        due_in seconds): a hint, whose loss costs the idle cadence."""
        notify.notify(self.wakes, due_in, count, self.app.logger)

    def release_due(self) -> list[str]:
        """In one step: every call whose rate window has freed goes back on the queue."""
        self._due_at = None
        released, next_in = self.release_due_in_store()
        if next_in is not None:
            self._wake_in(next_in)
        if released:
            self.wake_now()
        return released

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
