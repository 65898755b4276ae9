"""pynenc's runners by the names DEMO_RUNNER takes, and what each changes in the app's config.

tasks.py asks this module for its runner settings. It lives apart from demo/settings.py because
the wake runner imports pynenc, which the API and the scripts' start-up have no use for.
"""

import os
import sys
from typing import TYPE_CHECKING

from demo import atomic_claim, drain, settings, wake_runner

if TYPE_CHECKING:
    from pynenc import Pynenc

# MultiThreadRunner starts PROCESSES ThreadRunner processes of MAX_THREADS threads each;
# ProcessRunner forks one process per call, MAX_THREADS at a time (its default is one per core).
BY_NAME: dict[str, dict[str, object]] = {
    "thread": {},
    "wake": {},  # built by demo/wake_runner.py: see config()
    "multi-thread": {"runner_cls": "MultiThreadRunner", "max_processes": settings.PROCESSES},
    "process": {"runner_cls": "ProcessRunner", "min_parallel_slots": settings.MAX_THREADS},
}


def config() -> dict[str, object]:
    """What DEMO_RUNNER changes in the app's configuration: nothing for the article's runner,
    unless the claim is on, whose workers drain their calls when they stop (demo/drain.py)."""
    name = settings.get("DEMO_RUNNER")
    if name == "wake":
        # The same idle cadence as ThreadRunner's two sleeps per loop.
        idle, deadline = 2 * settings.runner_sleep(), settings.drain_deadline()
        return wake_runner.config(idle=idle, drain_deadline=deadline)
    if name == "thread" and settings.get("DEMO_ATOMIC_CLAIM") == "1":
        return drain.config(deadline=settings.drain_deadline())
    return BY_NAME[name]


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
    if why := atomic_claim.join_fleet(app, runner.runner_id):  # a mixed fleet: refused
        print(f"tasks.py: {why}", file=sys.stderr)
        raise SystemExit(2)
    backend = settings.get("DEMO_BACKEND")
    state = settings.get("REDIS_URL") if backend == "redis" else settings.get("DEMO_DB")
    claim = "on" if settings.get("DEMO_ATOMIC_CLAIM") == "1" else "off"
    print(
        f"worker: {backend} {state}, {type(runner).__name__}, atomic claim {claim}, "
        f"calling the API at {api_url}",
        flush=True,
    )
