"""A ThreadRunner that starts its next loop the moment one of its calls ends, not at the next poll.

Selected by class name (runner_cls="WakeRunner"): `keyclaim.install(..., runner="wake")`, or
`keyclaim.use_runner(builder, "wake", idle=0.2)` without the claim. It stops as keyclaim.drain's
runner does. Written and tested against pynenc 0.3.1 and 0.4.0 (and pynenc-redis 0.3.0 with
0.3.1); it refuses any other version in one line (keyclaim.versions).

Why it exists: pynenc's ThreadRunner sleeps `runner_loop_sleep_time_sec` twice per loop, so a
freed thread or account waits up to two sleeps for its next call. This one waits on an event
every finishing call (and, with the claim, every hand-over or due time) sets; idle, it looks
for new work once per `idle` times the fleet's live runners, so that N workers look as often
as one and a burst of enqueues still merges by registration dedupe (the repo's docs/speed.md
measures the cadence).

The upstream change that retires it: `ThreadRunner.runner_loop_iteration` waits on an event
each invocation's thread sets as it ends, and `BaseRunner.run` drops its second sleep for such
runners (the repo's docs/upstream.md, section 5).
"""

import threading
import time
from typing import TYPE_CHECKING, Any

from pynenc.runner.thread_runner import ThreadInfo

from keyclaim.config import DEFAULT_IDLE, IDLE_KEY
from keyclaim.drain import DrainingThreadRunner

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pynenc.invocation.dist_invocation import DistributedInvocation

RECOUNT = 2.0  # seconds between counts of the fleet's live runners


class WakeRunner(DrainingThreadRunner):
    """pynenc's ThreadRunner, woken by its own finishing calls, draining on a stop."""

    def _on_start(self) -> None:
        super()._on_start()
        self.finished = threading.Event()
        self.idle = float(self.app.config_values.get(IDLE_KEY, DEFAULT_IDLE))
        self.fleet, self.counted_at = 1, float("-inf")
        # With the claim, a key handed on, or a call whose rate window freed, wakes it too.
        if on_queued := getattr(self.app.orchestrator, "on_queued", None):
            on_queued(self.finished.set)

    def _iteration(self) -> None:
        """ThreadRunner's iteration, with the closing sleep replaced by a wait on `finished`."""
        # Cleared before looking for work: a call that ends from here on wakes the next loop.
        self.finished.clear()
        for invocation in self._invocations_to_run(self._reclaim_available_slots()):
            thread = threading.Thread(target=self._run, args=(invocation,), daemon=True)
            try:
                thread.start()
            except RuntimeError as exc:
                self.logger.error(f"Failed to start thread for {invocation.invocation_id}: {exc}")
                self.app.orchestrator.reroute_invocations(
                    {invocation.invocation_id}, self.runner_context
                )
                continue
            self.threads[invocation.invocation_id] = ThreadInfo(thread, invocation)
        due = getattr(self.app.orchestrator, "until_due", lambda: None)()
        idle = self.idle_wait()
        self.finished.wait(idle if due is None else min(idle, due))

    def idle_wait(self) -> float:
        """How long to wait for new work while nothing finishes: the fleet's cadence, `idle`,
        times its live runners (this one included), recounted every RECOUNT seconds."""
        if time.monotonic() - self.counted_at >= RECOUNT:
            self.counted_at = time.monotonic()
            self.fleet = max(1, len(self.app.orchestrator.get_active_runners()))
        return self.idle * self.fleet

    def _run(self, invocation: "DistributedInvocation") -> None:
        try:
            invocation.run(self.runner_context)
        finally:
            self.finished.set()

    def _invocations_to_run(self, slots: int) -> "Iterator[DistributedInvocation]":
        """Claimed one by one, each started before the next is claimed, as ThreadRunner does."""
        hooks: dict[str, Any] = {}
        if hasattr(self, "queue_names_for_retrieval"):  # pynenc 0.4.0 routes by queue
            hooks["queue_provider"] = self.queue_names_for_retrieval
            hooks["on_queue_retrieved"] = self.note_queue_retrieved
        return self.app.orchestrator.get_invocations_to_run(slots, self.runner_context, **hooks)
