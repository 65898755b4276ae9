"""A ThreadRunner that starts its next loop the moment one of its calls ends, not at the next poll.

Selected by class name (runner_cls="WakeRunner"), by `keyclaim.install(..., runner="wake")`
or on its own by `keyclaim.use_runner(builder, "wake", idle=0.2)`.

Written and tested against pynenc 0.3.1 and 0.4.0 (and pynenc-redis 0.3.0 with 0.3.1); it refuses
any other version in one line (keyclaim.versions), and works with the claim. It stops the way
keyclaim.drain's runner does: it lets its calls finish before it gives their keys up.

Why it exists. pynenc's ThreadRunner starts new work once per loop and sleeps
`runner_loop_sleep_time_sec` twice per loop (in `BaseRunner.run` and at the end of
`ThreadRunner.runner_loop_iteration`). A thread that frees up, or an account whose call just
ended, waits up to two sleeps before the next invocation starts. A shorter sleep helps, but
then the runner also picks up work sooner after it is enqueued, and registration dedupe, which
only merges into invocations not yet picked up, merges less (the article's scenario D).

What it does. It waits on an event that every finishing call sets: the loop runs again the
moment a slot or an account frees up (with the claim, the moment a key is handed on), and the
base loop's own sleep is set to zero. While nothing finishes it looks for new work once per
`idle`, times the live runners of the fleet (pynenc's heartbeats, counted every 2 s): a fleet
of N workers looks at the queue about as often as one would. That is what keeps a burst of
enqueues collapsing into one call (registration dedupe merges only into invocations not yet
picked up: the article's D). Measured in the sample, 10 rounds each: 3 workers each looking
every 0.04 s took a refresh mid-burst 3 times, every 0.12 s never; one worker looking every
0.04 s did once on a busy machine, every 0.1 s (the default) never. A call waiting for its
key's rate (keyclaim.limit) ends the wait at its due time.

The upstream change that retires it: in `pynenc/runner/thread_runner.py`, have
`ThreadRunner.runner_loop_iteration` wait on a `threading.Event` set by each invocation's
thread when it ends, with `runner_loop_sleep_time_sec` as the timeout, instead of
`time.sleep`, and drop the second sleep in `BaseRunner.run` for runners that wait this way.
"""

import threading
import time
from typing import TYPE_CHECKING

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
        # With the claim: a call waiting for its key's rate wakes this loop at its time.
        # And a call of a key handed on as another ends wakes it as the status is written.
        if on_queued := getattr(self.app.orchestrator, "on_queued", None):
            on_queued(self.finished.set)

    def runner_loop_iteration(self) -> None:
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
        orchestrator, ctx = self.app.orchestrator, self.runner_context
        if hasattr(self, "queue_names_for_retrieval"):  # pynenc 0.4.0 routes by queue
            return orchestrator.get_invocations_to_run(
                slots,
                ctx,
                queue_provider=self.queue_names_for_retrieval,
                on_queue_retrieved=self.note_queue_retrieved,
            )
        return orchestrator.get_invocations_to_run(slots, ctx)
