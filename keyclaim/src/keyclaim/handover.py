"""A worker's thread that hands its key on runs the next call itself.

A holder's final status hands its slot to the head of the key's line and queues that call; a
worker then had to wake its loop, take the call off the queue, claim it in a second step and
start a thread for it. Here the thread whose call ended (keyclaim.wake) takes that call off the
queue and claims it in one step of the store, and runs it: the key's hand-over costs the
outcome, that step and the next call's RUNNING. If another worker took the call first, or the
thread cannot run it (its runner stops, its call raised, the store does not answer), it stays
on the queue and the runner's loop is woken for it, as before. One step with kept
connections; else the dequeue commits alone and the call is put back if its read or claim
fails (a worker killed in between, or a store that cannot take it back: its key is healed by
a sweep, keyclaim.recovery). Retired with the claim (the upstream change: the repo's
docs/upstream.md, section 11).

On SQLite only: pynenc-redis's loop waits on the queue itself (BLPOP, `queue_timeout_sec`) and
pops a handed call the moment it is queued, so a thread would mostly find it gone, at the cost
of a scan of the queue (LREM) each time.
"""

import threading
from contextlib import AbstractContextManager, nullcontext, suppress
from typing import TYPE_CHECKING, Any

from keyclaim import outage
from keyclaim.decision import Verdict

if TYPE_CHECKING:
    from collections.abc import Callable

    from pynenc.invocation.dist_invocation import DistributedInvocation
    from pynenc.runner.runner_context import RunnerContext


class HandOver:
    """Mixed into keyclaim.orchestrator.AtomicClaim, whose claim, queue and wake it uses."""

    app: Any
    # AtomicClaim's and its store's
    wake_now: "Callable[[], None]"
    dequeue: "Callable[[str], bool]"
    claim: "Callable[..., Verdict]"
    _route: "Callable[[str], None]"

    def __init__(self, app: Any) -> None:
        super().__init__(app)  # type: ignore[call-arg]
        self._here = threading.local()  # a call's thread: the calls it handed a slot to

    def takes_handed(self) -> None:
        """This thread keeps the calls its final statuses hand a slot to, for take_handed,
        rather than waking its runner's loop to find them on the queue."""
        self._here.handed = []

    def _handed_on(self, invocation_id: str | None) -> None:
        """Once a final status is stored: its key's next call, if any, is on the queue."""
        handed = getattr(self._here, "handed", None)
        if invocation_id is None or handed is None:
            self.wake_now()
        else:
            handed.append(invocation_id)

    def take_handed(
        self, runner_ctx: "RunnerContext", take: bool = True
    ) -> "DistributedInvocation | None":
        """The call this thread's last final status handed its slot to, claimed for this runner
        if it is still on the queue (another worker may have taken it); else None. With take
        False (the runner stops, or the call raised), or a store that does not answer, the
        runner's loop is woken for it instead."""
        handed, self._here.handed = getattr(self._here, "handed", []), []
        taken = None
        for invocation_id in handed:
            if take and taken is None:
                try:
                    taken = self._take(invocation_id, runner_ctx)
                    continue  # ours; or gone from the queue, or waiting for its rate
                except Exception as exc:
                    if not outage.is_transient(exc):
                        raise
            self.wake_now()
        return taken

    def _take(
        self, invocation_id: str, runner_ctx: "RunnerContext"
    ) -> "DistributedInvocation | None":
        """Off the queue and claimed, in one transaction where the store has them."""
        with self._one():
            if not self.dequeue(invocation_id):
                return None
            try:  # off the queue: back on it if any step after fails (without a transaction)
                invocation = self.app.state_backend.get_invocation(invocation_id)
                verdict = self.claim(invocation, runner_ctx)
            except Exception:
                with suppress(Exception):
                    self._route(invocation_id)  # in a transaction: undone with the rest
                raise
        if verdict is Verdict.REQUEUE:
            self._route(invocation_id)
        return invocation if verdict is Verdict.RUN else None

    def _one(self) -> AbstractContextManager[None]:
        """Several steps in one transaction, where the store has them (keyclaim.sqlite_claim)."""
        return nullcontext()
