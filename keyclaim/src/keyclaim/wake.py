"""A ThreadRunner that starts its next loop the moment one of its calls ends, not at the next poll.

Selected by class name (runner_cls="WakeRunner"): `keyclaim.install(..., runner="wake")`, or
`keyclaim.use_runner(builder, "wake", idle=0.2)` without the claim. It stops as keyclaim.drain's
runner does. Written and tested against pynenc 0.3.1 and 0.4.0 (and pynenc-redis 0.3.0 with
0.3.1); it refuses any other version in one line (keyclaim.versions).

Why it exists: pynenc's ThreadRunner sleeps `runner_loop_sleep_time_sec` twice per loop, so a
freed thread or account waits up to two sleeps for its next call. This one waits on an event
every finishing call (and, with the claim, every hand-over or due time) sets, and, with the
claim, a listening thread sets as a call is queued by any process (keyclaim.notify: one wake
per call). It still looks once per `idle` times the fleet's live runners, so that N workers
look as often as one: what a lost notification costs. As it stops, it logs how its loops were
started (the repo's docs/speed.md counts them).

The upstream change that retires it: `ThreadRunner.runner_loop_iteration` waits on an event
each invocation's thread sets as it ends, and `BaseRunner.run` drops its second sleep for such
runners (the repo's docs/upstream.md, section 5).
"""

import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from pynenc.runner.thread_runner import ThreadInfo

from keyclaim.config import DEFAULT_IDLE, IDLE_KEY
from keyclaim.drain import DrainingThreadRunner
from keyclaim.outage import Outage

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pynenc.invocation.dist_invocation import DistributedInvocation

RECOUNT = 2.0  # seconds between counts of the fleet's live runners


class WakeRunner(DrainingThreadRunner):
    """pynenc's ThreadRunner, woken by its own finishing calls, draining on a stop."""

    def _on_start(self) -> None:
        super()._on_start()
        self.finished = threading.Event()
        self.swapping = threading.Lock()
        self.idle = float(self.app.config_values.get(IDLE_KEY, DEFAULT_IDLE))
        self.fleet, self.counted_at = 1, float("-inf")
        # How its loops were started: woken (and how often by a notification), at the idle
        # cadence, or at a due time.
        self.looks: Counter[str] = Counter()
        # With the claim, a key handed on, or a call whose rate window freed, wakes it too.
        if on_queued := getattr(self.app.orchestrator, "on_queued", None):
            on_queued(self.finished.set)
        self.wakes = getattr(self.app.orchestrator, "wakes", None)
        if self.wakes is not None:
            self.wakes.open(self.runner_id)
            threading.Thread(target=self._listen, daemon=True, name="wake listener").start()

    def _listen(self) -> None:
        """Each notification wakes the loop (one with a due time, then too); a store that does
        not answer is waited out with the runner's own pauses, never the end of the thread."""
        orchestrator, blink = self.app.orchestrator, Outage(self.logger, "wake listener")
        while (wakes := self.wakes) is not None:
            try:
                due_in = wakes.receive()
            except Exception as exc:  # whatever it is, the idle cadence still looks meanwhile
                if self.wakes is None:
                    break  # stopped: its socket closed under it
                time.sleep(blink.failed(exc))
                continue
            blink.answered()
            if due_in is not None:
                self.looks["notified"] += 1
                if due_in > 0:
                    orchestrator._wake_in(due_in)
                self.finished.set()

    def _on_stop_runner_loop(self) -> None:
        super()._on_stop_runner_loop()
        self.finished.set()  # told to stop: not at the end of a long idle wait

    def _on_stop(self) -> None:
        super()._on_stop()
        wakes, self.wakes = self.wakes, None
        if wakes is not None:
            wakes.close()
        self.logger.info(f"wake runner's loops: {dict(sorted(self.looks.items()))}")

    def _iteration(self) -> None:
        """ThreadRunner's iteration, with the closing sleep replaced by a wait on `finished`."""
        # Cleared before looking for work: a call that ends from here on wakes the next loop.
        self.finished.clear()
        if (starts := getattr(self.app.orchestrator, "starts_taken", None)) is not None:
            starts()  # each call it takes, it starts here and now: RUNNING stored with the take
        for invocation in self._invocations_to_run(self._reclaim_available_slots()):
            thread = threading.Thread(target=self._run, args=(invocation,), daemon=True)
            with self.swapping:  # named before it starts: it may name its next call first
                self.threads[invocation.invocation_id] = ThreadInfo(thread, invocation)
            try:
                thread.start()
            except RuntimeError as exc:
                with self.swapping:
                    del self.threads[invocation.invocation_id]
                self.logger.error(f"Failed to start thread for {invocation.invocation_id}: {exc}")
                orchestrator, invocation_id = self.app.orchestrator, invocation.invocation_id
                if hasattr(orchestrator, "not_started"):  # the claim: it may be RUNNING already
                    orchestrator.not_started(invocation_id, self.runner_context)
                else:
                    orchestrator.reroute_invocations({invocation_id}, self.runner_context)
        due = getattr(self.app.orchestrator, "until_due", lambda: None)()
        idle = self.idle_wait()
        if self.finished.wait(idle if due is None else min(idle, due)):
            self.looks["woken"] += 1
        elif due is not None and due < idle:
            self.looks["due"] += 1
        else:
            if not self.looks["idle"]:
                self.logger.info(f"wake runner idle: it looks again every {idle:g}s meanwhile")
            self.looks["idle"] += 1
            # A due time whose notification was lost: released at this cadence.
            getattr(self.app.orchestrator, "release_due", lambda: None)()

    def idle_wait(self) -> float:
        """How long to wait for new work while nothing finishes: the fleet's cadence, `idle`,
        times its live runners (this one included), recounted every RECOUNT seconds."""
        if time.monotonic() - self.counted_at >= RECOUNT:
            self.counted_at = time.monotonic()
            self.fleet = max(1, len(self.app.orchestrator.get_active_runners()))
        return self.idle * self.fleet

    def _run(self, invocation: "DistributedInvocation") -> None:
        """The call; then, with the claim on SQLite, each time a call's end hands its key on,
        the oldest call on the queue (keyclaim.handover): no loop woken, no thread started."""
        orchestrator, first = self.app.orchestrator, invocation.invocation_id
        take = getattr(orchestrator, "take_handed", None)
        try:
            while invocation is not None:
                ran = False
                if take is not None:
                    orchestrator.takes_handed(lambda: self.running)
                try:
                    invocation.run(self.runner_context)
                    ran = True
                finally:
                    invocation = take and take(self.runner_context, ran and self.running)
                if invocation is not None:
                    self.looks["taken by a thread that handed a key on"] += 1
                    with self.swapping:  # what a stop drains, and names, is this call now
                        self.threads[first] = ThreadInfo(threading.current_thread(), invocation)
        finally:
            self.finished.set()

    def _reclaim_available_slots(self) -> int:
        with self.swapping:  # not while a thread names its next call
            return super()._reclaim_available_slots()

    def _invocations_to_run(self, slots: int) -> "Iterator[DistributedInvocation]":
        """Claimed one by one, each started before the next is claimed, as ThreadRunner does."""
        hooks: dict[str, Any] = {}
        if hasattr(self, "queue_names_for_retrieval"):  # pynenc 0.4.0 routes by queue
            hooks["queue_provider"] = self.queue_names_for_retrieval
            hooks["on_queue_retrieved"] = self.note_queue_retrieved
        return self.app.orchestrator.get_invocations_to_run(slots, self.runner_context, **hooks)
