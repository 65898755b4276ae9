"""A worker's thread that hands its key on takes the next call off the queue itself.

A holder's final status hands its slot to the head of the key's line and queues that call; a
worker then had to wake its loop, take the call off the queue, claim it in a second step and
start a thread for it. Here the thread whose call ended (keyclaim.wake) takes the oldest call
off the queue and claims it in one step of the store, and runs it: the handed call when nothing
older waits, so the queue's order holds and a busy key's chain never keeps a thread from calls
queued before it. The hand-over then costs the outcome and that step, in which, with kept
connections, the next call's RUNNING is stored too. A thread that takes another call, or cannot
take one (its runner stops, its call raised, the store does not answer), wakes its runner's
loop for the handed call, as before. One step with kept connections; else the dequeue commits
alone and the call is put back if its read or claim fails (a worker killed in between, or a
store that cannot take it back: its key is healed by a sweep, keyclaim.recovery). Retired with
the claim (the upstream change: the repo's docs/upstream.md, section 11).

On SQLite only: pynenc-redis's loop waits on the queue itself (BLPOP, `queue_timeout_sec`) and
pops a handed call the moment it is queued.
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
    dequeue: "Callable[[str], str | None]"
    claim: "Callable[..., Verdict]"
    _route: "Callable[[str], None]"
    reroute_invocations: "Callable[..., None]"
    _reroute_unstored: "Callable[[RunnerContext], None]"
    _started: set[str]
    _unstored: set[str]
    _admitted: dict[str, Any]

    def __init__(self, app: Any) -> None:
        super().__init__(app)  # type: ignore[call-arg]
        self._here = threading.local()  # a call's thread: the calls it handed a slot to

    def starts_taken(self) -> None:
        """This thread's loop starts each call it takes in a thread of this process at once
        (keyclaim.wake): its take stores the call's RUNNING in the step that claims it, as a
        hand-over's take does, one transaction fewer a call."""
        self._here.starts = True

    def _starts_in_step(self, invocation_id: str) -> bool:
        """Whether the loop's take stores this claimed call's RUNNING: where its loop starts
        what it takes, unless the call was claimed under a rate. A rated call counts from its
        RUNNING, and the rate's grace covers only its way from there to the provider; between
        the loop's take and its thread's call come the loop's next claims, which took longer
        than the grace with three workers (G throttled), so its thread stores it as it runs."""
        return getattr(self._here, "starts", False) and invocation_id not in self._admitted

    def not_started(self, invocation_id: str, runner_ctx: "RunnerContext") -> None:
        """A call this runner took but could not start a thread for: back on the queue now.
        One whose take stored its RUNNING goes through KILLED, as a call whose outcome could
        not be stored does (`_reroute_unstored`): RUNNING cannot be rerouted. A store that
        does not answer leaves it to the next loop, or, if the runner stops first, to the
        recovery of a silent runner's calls."""
        if invocation_id not in self._started:
            self.reroute_invocations({invocation_id}, runner_ctx)
            return
        self._started.discard(invocation_id)
        self._unstored.add(invocation_id)
        try:
            self._reroute_unstored(runner_ctx)
        except Exception as exc:
            if not outage.is_transient(exc):
                raise

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
        """When this thread's last final status handed its key on: the oldest call on the
        queue, claimed for this runner, to run in this thread (the handed call itself unless
        older ones wait: the queue's order holds; the store may put a key with a long line
        first, keyclaim.sqlite_tables `_line_first`). The runner's loop is woken for the handed
        call if this thread did not take it, or could not (take False: the runner stops, or its
        call raised; a store that does not answer)."""
        handed, self._here.handed = getattr(self._here, "handed", []), []
        if not handed:
            return None
        taken = None
        try:
            taken = self._take_oldest(runner_ctx, handed[0]) if take else None
        except Exception as exc:
            if not outage.is_transient(exc):
                raise
        if taken is None or taken.invocation_id not in handed:
            self.wake_now()
        return taken

    def _take_oldest(
        self, runner_ctx: "RunnerContext", handed: str
    ) -> "DistributedInvocation | None":
        """As the loop takes calls (pynenc 0.4.0: from the handed call's queue): off the queue
        and claimed (here in one transaction, where the store has them), until one may run;
        one the store could not decide goes back."""
        while True:
            with self._one():
                if (invocation_id := self.dequeue(handed)) is None:
                    return None
                try:  # off the queue: back on it if any step after fails (without a transaction)
                    invocation = self.app.state_backend.get_invocation(invocation_id)
                    if (verdict := self.claim(invocation, runner_ctx)) is Verdict.RUN:
                        self._start_in_step(invocation_id, runner_ctx)
                except Exception:
                    with suppress(Exception):
                        self._route(invocation_id)  # in a transaction: undone with the rest
                    raise
            if verdict is Verdict.RUN:
                return invocation
            if verdict is Verdict.REQUEUE:
                self._route(invocation_id)
                return None

    def _start_in_step(self, invocation_id: str, runner_ctx: "RunnerContext") -> None:
        """Nothing here: the call's RUNNING is written as its thread runs it (on SQLite with
        kept connections, in the step that took it: keyclaim.sqlite_claim)."""

    def _one(self) -> AbstractContextManager[None]:
        """Several steps in one transaction, where the store has them (keyclaim.sqlite_claim)."""
        return nullcontext()
