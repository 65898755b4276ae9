"""A ThreadRunner that, told to stop, lets its calls finish before it gives their keys up.

Selected by class name (runner_cls="DrainingThreadRunner"): `keyclaim.install`, or
`keyclaim.use_runner(builder, "drain", drain_deadline=12.0)` without the claim. As it starts,
it joins the fleet (keyclaim.fleet): a worker whose settings differ from a live one's is
refused in one line. Written and tested against pynenc 0.3.1 and 0.4.0 (and pynenc-redis 0.3.0
with 0.3.1); it refuses any other version (keyclaim.versions).

Why it exists: on SIGTERM or Ctrl-C (every deploy), pynenc's `ThreadRunner._on_stop` reroutes
each in-flight invocation *before* joining its thread: another worker calls again while the
first call is in flight. This one waits for its calls, up to a deadline, beating meanwhile;
past it, it exits holding what still runs (RUNNING under its name), recovered once it has been
silent for the dead-after window, which is longer than a call can stay in flight: the cut call
is over by then, and its fencing token refuses it if it still arrives.

It rides out a store that stops answering (a Redis paused or restarted), where pynenc's loop
re-raises the error and the runner exits: one line as the store stops answering, pauses that
grow, one line as it answers again (keyclaim.outage); redis-py reconnects on the next command.

The upstream change that retires it: `ThreadRunner._on_stop` joins its threads first, with a
deadline and heartbeats, then reroutes only the invocations whose thread ended without a final
status (the repo's docs/upstream.md, section 7).
"""

import sys
import time
from collections.abc import Callable
from functools import partial

from pynenc.runner.thread_runner import ThreadInfo, ThreadRunner

from keyclaim import fleet, outage, versions
from keyclaim.config import DEADLINE_KEY, DEFAULT_DEADLINE

# How often a draining runner beats when pynenc's interval is longer (its default is 30 s).
LONGEST_BEAT = 1.0


class DrainingThreadRunner(ThreadRunner):
    """pynenc's ThreadRunner, stopping by draining rather than by rerouting."""

    def _on_start(self) -> None:
        # However pynenc came to select this class: the same guard as the claim's.
        classes = [cls.__name__ for cls in type(self).__mro__]  # a subclass's too
        versions.check_resolved(self.app.conf.orchestrator_cls, *classes)
        super()._on_start()
        self.drain_deadline = float(self.app.config_values.get(DEADLINE_KEY, DEFAULT_DEADLINE))
        self.store_outage = outage.Outage(self.logger, f"runner:{self.runner_id}")
        fleet.join_fleet(self.app, self.runner_id)  # before it takes any work

    def _check_atomic_services(self) -> None:
        """pynenc's beat and services, not tried while the store is known not to answer (pynenc
        logs each failure with a traceback); after a failure, tried again on the next loop,
        not a beat interval later: the others judge this runner by its beats."""
        if self.store_outage.since is None and not self._answered(super()._check_atomic_services):
            self._last_atomic_service_check_time = 0.0

    def runner_loop_iteration(self) -> None:
        if self._answered(self._iteration):
            self.store_outage.answered()
        else:
            time.sleep(self.store_outage.pause)

    def _iteration(self) -> None:
        super().runner_loop_iteration()

    def _answered(self, step: Callable[[], None]) -> bool:
        """step(); False when the store did not answer (told once per outage)."""
        try:
            step()
        except Exception as exc:
            if not outage.is_transient(exc):
                raise
            self.store_outage.failed(exc)
            return False
        return True

    def _on_stop(self) -> None:
        ends = time.monotonic() + self.drain_deadline
        beat = min(LONGEST_BEAT, self.app.conf.atomic_service_check_interval_minutes * 60)
        if running := self._running():
            self.logger.warning(
                f"Draining {len(running)} call(s) before stopping, for up to "
                f"{self.drain_deadline:g}s: no new work is taken"
            )
        while running and (left := ends - time.monotonic()) > 0:
            # Still alive, and still the holder: other runners must not take us for dead.
            self._answered(self._beat)
            running[0].thread.join(min(beat, left))
            running = self._running()
        for info in self.threads.values():
            if not info.thread.is_alive() and self.store_outage.since is None:
                # Quiet when the call reached its final status, which is the usual case. With
                # the store gone, left RUNNING here: recovered after the dead-after window.
                self._answered(partial(self._kill_and_reroute, info.invocation.invocation_id))
        if running:
            ids = ", ".join(str(info.invocation.invocation_id) for info in running)
            self.logger.warning(
                f"Stopping with {len(running)} call(s) still running after "
                f"{self.drain_deadline:g}s ({ids}): they stay RUNNING under this runner and are "
                "recovered once it has been silent for the dead-after window"
            )
        if kept := sys.modules.get("keyclaim.connections"):
            kept.close()  # the free ones; a drained-past call's is closed as it ends

    def _beat(self) -> None:
        beat = self.app.orchestrator.register_runner_heartbeats
        beat([self.runner_id], can_run_atomic_service=True)

    def _running(self) -> list[ThreadInfo]:
        return [info for info in self.threads.values() if info.thread.is_alive()]
