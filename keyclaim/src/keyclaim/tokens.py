"""What a task sends the provider: the fencing token of its claim, and the slot it holds.

Handed over on the invocation the claim yields (keyclaim.orchestrator), else asked of the store;
pynenc is imported only as they are called. Retired with keyclaim.orchestrator.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pynenc import Pynenc

TOKEN_ATTRIBUTE, SLOT_ATTRIBUTE = "fence_token", "fence_slot"


def token(app: "Pynenc") -> int | None:
    """The fencing token of the invocation running in this thread; None without the claim."""
    return _held(app, TOKEN_ATTRIBUTE, "fence_token")


def slot(app: "Pynenc") -> int | None:
    """The slot of its key the invocation running in this thread holds; None without the claim."""
    return _held(app, SLOT_ATTRIBUTE, "fence_slot")


def _held(app: "Pynenc", attribute: str, lookup_name: str) -> int | None:
    """Handed over with the claim, in this process; else asked of the store."""
    from pynenc import context

    invocation = context.get_dist_invocation_context(app.app_id)
    if invocation is None:
        return None
    if (held := getattr(invocation, attribute, None)) is not None:
        return int(held)
    lookup = getattr(app.orchestrator, lookup_name, None)
    return lookup(invocation.invocation_id) if lookup else None
