"""A worker's thread that hands its key on takes the next call off the queue itself.

A holder's final status hands its slot to the head of the key's line and queues that call; a
worker then had to wake its loop, take the call off the queue, claim it in a second step and
start a thread for it. Here the thread whose call ended (keyclaim.wake) takes the oldest call
off the queue and claims it in one step of the store, and runs it: the handed call when nothing
older waits, so the queue's order holds and a busy key's chain never keeps a thread from calls
queued before it. The hand-over then costs the outcome and that step, in which, with kept
connections, the next call's RUNNING is stored too; the wake runner's thread takes it in its
call's result step itself (`_take_in_step`, a part of that step undone alone if it fails): one
transaction a hand-over, not two. A worker killed in that step loses the result with the take,
and the call is run again, as in any kill before its outcome is stored. A thread that takes
another call, or cannot take one (its runner stops, its call raised, the store does not
answer), wakes its runner's loop for the handed call, as before. One step with kept
connections; else the dequeue commits alone and the call is put back if its read or claim
fails (a worker killed in between, or a store that cannot take it back: its key is healed by
a sweep, keyclaim.recovery). Retired with the claim (the upstream change: the repo's
docs/upstream.md, section 11).

On SQLite only: pynenc-redis's loop waits on the queue itself (BLPOP, `queue_timeout_sec`) and
pops a handed call the moment it is queued.
"""

import threading
from contextlib import AbstractContextManager, nullcontext, suppress
from typing import TYPE_CHECKING, Any

from pynenc import context

from keyclaim import outage
from keyclaim.decision import Verdict
from keyclaim.transaction import StepLost

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

    def takes_handed(self, in_step: "Callable[[], bool] | None" = None) -> None:
        """This thread keeps the calls its final statuses hand a slot to, for take_handed,
        rather than waking its runner's loop to find them on the queue. With in_step, a
        result's step takes the next call itself while in_step() (`_take_in_step`: its runner
        still runs); else take_handed takes it in a step of its own."""
        self._here.handed, self._here.in_step = [], in_step
        self._here.handing = self._here.taken = None

    def _handing(self, invocation_id: str) -> None:
        """In a final status's step: the key's next call, queued in it."""
        self._here.handing = invocation_id

    def _take_in_step(self, runner_ctx: "RunnerContext") -> None:
        """In a result's step, where the store has one: the oldest call, taken as take_handed
        would, one transaction fewer a hand-over. Its own part of the step (transaction.part):
        a take that fails is undone alone, the result kept, and the loop is woken for the
        handed call."""
        handed, self._here.handing = getattr(self._here, "handing", None), None
        in_step = getattr(self._here, "in_step", None)
        if handed is None or in_step is None or (part := self._part()) is None or not in_step():
            return
        # Outside its call's context, as after it: its lines name the runner, not the call.
        ending = context.swap_dist_invocation_context(self.app.app_id, None)
        try:
            with part as after_commit:
                taken = self._take_oldest(runner_ctx, handed)
        except Exception as exc:  # the handed call is on the queue still: the loop's
            if isinstance(exc, StepLost):
                raise  # the result with it: the step is tried again, or fails, whole
            self.app.logger.warning(f"invocation:{handed} left to the loop: {exc!r}")
            self._here.taken = (None,)
            return
        finally:
            context.swap_dist_invocation_context(self.app.app_id, ending)
        after_commit(lambda: setattr(self._here, "taken", (taken,)))

    def _part(self) -> "AbstractContextManager[Callable[[Callable[[], None]], None]] | None":
        """A part of the step in progress that an error undoes alone, giving how to run a
        function once the step is committed; None where a step has no parts."""
        return None

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
        tried, self._here.taken = getattr(self._here, "taken", None), None
        if tried is not None:  # in the result's step: what it took, if anything
            (taken,) = tried
            if taken is not None and not take:  # its runner stops: not run here
                self.not_started(taken.invocation_id, runner_ctx)
                taken = None
            if handed and (taken is None or taken.invocation_id not in handed):
                self.wake_now()
            return taken
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
