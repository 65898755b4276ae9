"""What operators and launchers read: the claim's counts, the fleet, and problems found early.

None of it changes what the claim does (keyclaim/README.md, "The names"); importing it imports
no pynenc, so a launcher can check before it starts anything.
"""

from typing import TYPE_CHECKING, Any

from keyclaim.config import BEATS_PER_WINDOW, window_problem
from keyclaim.fleet import alive_here, beating, fleet_problem, join_fleet
from keyclaim.versions import check as check_versions

if TYPE_CHECKING:
    from pynenc import Pynenc

    from keyclaim.limits import Limit
    from keyclaim.orchestrator import AtomicClaim

__all__ = [
    "alive_here",
    "beating",
    "check_versions",
    "counts",
    "fleet_problem",
    "join_fleet",
    "limit_of",
    "redis_problem",
    "waiting",
    "windows_problem",
]


def counts(app: "Pynenc") -> dict[str, int] | None:
    """The claim's own counts: claims made and the tries a conflict cost; None without it."""
    return None if (claim := _claim(app)) is None else claim.claim_counts()


def waiting(app: "Pynenc") -> int | None:
    """Calls parked in a line right now, all keys together; None without the claim."""
    return None if (claim := _claim(app)) is None else claim.waiting()


def limit_of(task: Any) -> "Limit":
    """What a task declared with keyclaim.limit, or one call per key: a provider's quota."""
    from keyclaim import limits

    return limits.declared([task.task_id.key]).get(task.task_id.key, limits.ONE)


def _claim(app: "Pynenc") -> "AtomicClaim | None":
    from keyclaim.orchestrator import AtomicClaim

    return app.orchestrator if isinstance(app.orchestrator, AtomicClaim) else None


def windows_problem(dead_after: float, longest_call: float) -> str | None:
    """Why install would refuse these windows, in one line; None when it would take them."""
    return window_problem(dead_after, dead_after / BEATS_PER_WINDOW, longest_call)


def redis_problem(url: str) -> str | None:
    """Why the Redis at url cannot run the claim (it refuses WATCH/MULTI/EXEC), or None."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.transaction(lambda pipe: pipe.multi(), "atomic-claim:probe")
    except redis.RedisError as exc:
        return f"the Redis at {url} refuses WATCH/MULTI/EXEC, which the claim needs ({exc})"
    finally:
        client.close()
    return None
