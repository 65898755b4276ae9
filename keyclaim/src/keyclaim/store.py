"""The small interface each backend implements: the claim's atomic steps in its store.

Each step reads, decides (keyclaim.decision) and writes in one transaction of the store's own;
the rest is shared (keyclaim.orchestrator). Retired with it.
"""

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

from keyclaim.decision import Decision, Verdict

if TYPE_CHECKING:
    from pynenc.invocation.dist_invocation import DistributedInvocation
    from pynenc.invocation.status import InvocationStatusRecord


class ClaimStore(ABC):
    """The claim's steps in one backend's store. Every clock read is the store's own."""

    @abstractmethod
    def claim_in_store(
        self, invocation: "DistributedInvocation", runner_id: str, dead_after: float, busy: Verdict
    ) -> Decision:
        """In one step: read the invocation, its key's holders (silent for dead_after: recovered)
        and its rate window, decide, write, and issue the slot's next fencing token."""

    @abstractmethod
    def admit_in_store(self, invocation: "DistributedInvocation") -> bool:
        """In one step: index the key, then queue the invocation (True) or park it (False)."""

    @abstractmethod
    def restamp_in_store(self, invocation_id: str, admitted: tuple[str, str, float]) -> None:
        """The call's admission to its key's rate window (`admitted`, as the claim named it) is
        dated now: the call starts, and the provider sees it a moment later (keyclaim.limits)."""

    @abstractmethod
    def recover_in_store(
        self, invocation_id: str, runner_id: str, dead_after: float, max_pending: float
    ) -> list["InvocationStatusRecord"]:
        """In one step: recover the invocation if it is still RUNNING under a runner silent for
        dead_after seconds, or PENDING for max_pending, and queue it again."""

    @abstractmethod
    def holders_to_heal(self) -> tuple[list[str], list[str]]:
        """The keys' holders that may need healing: (ended or stuck, available but unqueued)."""

    @abstractmethod
    def heal_in_store(
        self, invocation_id: str, runner_id: str, stuck: bool, requeue: bool
    ) -> list["InvocationStatusRecord"]:
        """In one step, for a holder still in that state: an ended one hands its key on; a stuck
        one (seen so on the last sweep too) is rerouted and queued; an available one missing
        from the queue is queued (requeue)."""

    @abstractmethod
    def beat_in_store(self, runner_ids: list[str]) -> None:
        """Each runner's heartbeat."""

    @abstractmethod
    def silent_runners(self, runner_ids: set[str], window: float, adopt: bool = False) -> set[str]:
        """Those of runner_ids with no heartbeat in the last window seconds. One the store has
        no beat of is silent, unless adopt (the recovery's question): then its first beat is
        recorded now, and it is judged a window later."""

    @abstractmethod
    def prune_in_store(self, silent_for: float) -> None:
        """Forget the beats of runners silent for silent_for seconds, and admissions older than
        every declared rate window (Redis: its windows expire by themselves)."""

    @abstractmethod
    def pending_too_long(self, window: float) -> list[str]:
        """PENDING invocations claimed more than window seconds ago."""

    @abstractmethod
    def release_due_in_store(self) -> tuple[list[str], float | None]:
        """In one step: each call waiting for its rate whose due time has passed (store's
        clock) goes back on the queue. Returns those, and the seconds until the next is due."""

    @abstractmethod
    def fence_slot(self, invocation_id: str) -> int | None:
        """The slot of its key the invocation holds."""

    @abstractmethod
    def fence_token(self, invocation_id: str) -> int | None:
        """The token the invocation's latest claim was issued."""

    @abstractmethod
    def claim_counts(self, task: str | None = None) -> dict[str, int]:
        """Claims made so far (of one task's invocations, given its key), and how many tries a
        conflict sent back."""

    @abstractmethod
    def waiting(self) -> int:
        """Calls parked in a line right now, all keys together."""
