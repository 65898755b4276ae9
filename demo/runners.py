"""pynenc's runners by the names DEMO_RUNNER takes, and how tasks.py selects them.

tasks.py asks this module for its runner settings. It lives apart from demo/settings.py because
it imports the claim's library, which the API and the scripts' start-up have no use for.
"""

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import keyclaim
from demo import settings

if TYPE_CHECKING:
    from pynenc import Pynenc, PynencBuilder

# MultiThreadRunner starts PROCESSES ThreadRunner processes of MAX_THREADS threads each;
# ProcessRunner forks one process per call, MAX_THREADS at a time (its default is one per core).
BY_NAME: dict[str, dict[str, object]] = {
    "thread": {},
    "wake": {},  # keyclaim's wake runner: see select()
    "multi-thread": {"runner_cls": "MultiThreadRunner", "max_processes": settings.PROCESSES},
    "process": {"runner_cls": "ProcessRunner", "min_parallel_slots": settings.MAX_THREADS},
}
# With the claim, the runners that drain their calls on a stop (keyclaim's); pynenc's others
# hand them on, and only the fencing token keeps them from being applied twice at once.
FOR_CLAIM = {"thread": "drain", "wake": "wake"}


def _idle() -> float:
    return 2 * settings.runner_sleep()  # the same idle cadence as ThreadRunner's two sleeps


def select(builder: "PynencBuilder", claim: bool) -> "PynencBuilder":
    """DEMO_RUNNER's runner: the article's ThreadRunner, keyclaim's wake runner, or one of
    pynenc's others. With the claim, keyclaim.install selects its draining runner (for_claim)."""
    name = settings.get("DEMO_RUNNER")
    if name == "wake" and not claim:
        return keyclaim.use_runner(builder, "wake", settings.drain_deadline(), _idle())
    return builder.custom_config(**BY_NAME[name])


def for_claim() -> dict[str, object]:
    """keyclaim.install's runner arguments for DEMO_RUNNER."""
    runner = FOR_CLAIM.get(settings.get("DEMO_RUNNER"))
    return {"runner": runner, "drain_deadline": settings.drain_deadline(), "idle": _idle()}


@contextmanager
def refusals(program: str) -> Iterator[None]:
    """The claim's refusal (keyclaim.Refused) as a program's one line, and exit 2."""
    try:
        yield
    except keyclaim.Refused as refused:
        print(f"{program}: {refused}", file=sys.stderr)
        raise SystemExit(2) from None


def announce(app: "Pynenc", api_url: str) -> None:
    """In a worker (`pynenc --app tasks.app runner start`): one line on what it runs on, so
    the four-terminal way's mismatches (another database, port or claim setting) show at
    once; its runner's context (pid, host) stored now, not with its first call, so that
    demo/live.py can tell a live worker from a stopped one by its pid; and its claim settings
    recorded for the fleet, or, when they differ from a live worker's, one line and exit 2."""
    program = os.path.basename(sys.argv[0]) if sys.argv else ""
    if program not in ("pynenc", "__main__.py") or "runner" not in sys.argv[1:]:
        return
    runner = app.runner  # the instance the command then runs
    app.state_backend.store_runner_context(runner.runner_context)
    with refusals("tasks.py"):  # a mixed fleet
        keyclaim.join_fleet(app, runner.runner_id)
    backend = settings.get("DEMO_BACKEND")
    state = settings.get("REDIS_URL") if backend == "redis" else settings.get("DEMO_DB")
    claim = "on" if settings.get("DEMO_ATOMIC_CLAIM") == "1" else "off"
    print(
        f"worker: {backend} {state}, {type(runner).__name__}, atomic claim {claim}, "
        f"calling the API at {api_url}",
        flush=True,
    )
