"""pynenc's runners by the names DEMO_RUNNER takes, and what each changes in the app's config.

tasks.py asks this module for its runner settings. It lives apart from demo/settings.py because
the wake runner imports pynenc, which the API and the scripts' start-up have no use for.
"""

from demo import drain, settings, wake_runner

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
