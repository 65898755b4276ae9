"""The names the library writes into pynenc's configuration, and what makes its windows sound.

The bottom of the package, importing nothing of the library: the installer writes these keys
and class names, the classes read them back from the configuration pynenc resolved. Written
against pynenc 0.3.1 and 0.4.0 (their keys and class names); retired with the classes it names.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pynenc import Pynenc

ORCHESTRATORS = {"sqlite": "AtomicClaimSQLiteOrchestrator", "redis": "AtomicClaimRedisOrchestrator"}
RUNNERS = {"drain": "DrainingThreadRunner", "wake": "WakeRunner"}
# pynenc's SQLite classes, with kept connections (keyclaim.connections, keyclaim.quiet).
KEPT = {
    "broker_cls": "KeptSQLiteBroker",
    "state_backend_cls": "KeptSQLiteStateBackend",
    "trigger_cls": "QuietSQLiteTrigger",
    "client_data_store_cls": "KeptSQLiteClientDataStore",
}
KEPT_ORCHESTRATOR = "KeptSQLiteOrchestrator"
QUIET_REDIS = "QuietRedisTrigger"  # pynenc-redis's trigger, selected with the claim on Redis
STOCK_SQLITE = {"SQLiteOrchestrator", KEPT_ORCHESTRATOR}
KEEP_KEY = "keep_sqlite_connections"  # True: keep_connections selected them
# Keys of the library's own in pynenc's configuration (pynenc keeps keys it does not know).
LONGEST_CALL_KEY = "atomic_claim_longest_call_sec"  # the longest a call stays in flight
DEADLINE_KEY = "drain_deadline_sec"  # how long a stopping runner waits for its calls
IDLE_KEY = "wake_runner_idle_sec"  # how often the wake runners' fleet looks for new work
SELECTED = "keyclaim_selects_"  # + orchestrator_cls / runner_cls: what install selected
BEATS_PER_WINDOW = 4  # what install() asks for
FEWEST_BEATS = 3  # what the check accepts: one lost beat must not look like a death
DEFAULT_DEADLINE = 12.0
DEFAULT_IDLE = 0.1  # the fallback for a lost wake, or a call queued by a sweep: docs/speed.md


def window_problem(dead_after: float, beat_every: float, longest_call: float | None) -> str | None:
    """Why these windows would let the claim lie, in one line; None when they are sound."""
    if longest_call is None:
        return (
            "the longest a call can stay in flight is not configured: select the claim with "
            "keyclaim.install(builder, dead_after, longest_call)"
        )
    if dead_after <= longest_call:
        return (
            f"a runner silent for {dead_after:g}s is taken for dead, but a call may stay in "
            f"flight for {longest_call:g}s (the task's timeout): the dead-after window must "
            "be longer, or the timeout shorter"
        )
    if beat_every * FEWEST_BEATS > dead_after:
        return (
            f"runners beat every {beat_every:g}s (atomic_service_check_interval_minutes), "
            f"fewer than {FEWEST_BEATS} times in the {dead_after:g}s dead-after window: a live "
            "runner would be taken for dead (is PYNENC__ATOMIC_SERVICE_CHECK_INTERVAL_MINUTES "
            "or [tool.pynenc] overriding it?)"
        )
    return None


def windows(app: "Pynenc") -> tuple[float, float, float | None]:
    """The resolved dead-after window, beat interval and longest call, in seconds."""
    longest = (app.config_values or {}).get(LONGEST_CALL_KEY)
    return (
        app.conf.runner_considered_dead_after_minutes * 60,
        app.conf.atomic_service_check_interval_minutes * 60,
        None if longest is None else float(longest),
    )


def resolved_problem(app: "Pynenc") -> str | None:
    """window_problem for the configuration pynenc resolved, overrides included."""
    return window_problem(*windows(app))


def is_on(app: "Pynenc") -> bool:
    """Whether the app's orchestrator is one of the claim's, or derives from one."""
    return any(cls.__name__ in ORCHESTRATORS.values() for cls in type(app.orchestrator).__mro__)
