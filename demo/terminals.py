"""What enqueue.py says when the four terminals do not line up, in one line each.

No worker on its state, every worker gone mid-run, the workers calling another API; and what
a run that gives up leaves behind (found and ended by demo/leftovers.py).
"""

from collections.abc import Mapping
from types import ModuleType

from demo import leftovers, live, report, settings
from demo.scenarios import Scenario

NO_WORKER_EXIT = 3  # enqueue.py's exit code when no worker runs, or none is left
BUSY_EXIT = 4  # when another run owns the provider


class GaveUp(Exception):
    """The run stopped waiting: what happened, and what it left behind."""


class Interrupted(Exception):
    """Ctrl-C mid-run: what it left behind."""


# What a worker must share with this terminal to run its calls as this run expects.
SHARED = ("DEMO_API_HOST", "DEMO_API_PORT", "DEMO_ATOMIC_CLAIM", "DEMO_DEAD_AFTER")
SHARED += ("DEMO_CALL_TIMEOUT", "DEMO_RUNNER")


def state_and_start(api: Mapping[str, str]) -> tuple[str, str]:
    """Where the workers should be, and the command that starts one there: with this
    terminal's settings that differ from the defaults (api: the API's address, as its flags
    say), so that it runs as this one expects."""
    start = settings.command("pynenc --app tasks.app runner start", api, SHARED)
    if settings.get("DEMO_BACKEND") == "redis":
        return f"the Redis at {settings.get('REDIS_URL')}", start
    return settings.get("DEMO_DB"), start


def no_worker(api: Mapping[str, str], why: str = "") -> str:
    """why: what became of a worker seen starting (live.awaited)."""
    where, start = state_and_start(api)
    why = why or f"none beat in the last {live.ALIVE_WITHIN:g}s from a process still running"
    return (
        f"no worker is running on {where} ({why}), so nothing was enqueued; start one in "
        f"another terminal: {start}"
    )


def no_worker_left(tasks: ModuleType, scenario: Scenario, api: Mapping[str, str]) -> str:
    where, start = state_and_start(api)
    return (
        f"every worker on {where} stopped mid-run; "
        f"{cancel_unpicked(tasks, scenario, workers_left=False)}; "
        f"start one in another terminal: {start}"
    )


def elsewhere(url: str) -> str:
    """Every invocation ended, and not one call reached this provider."""
    port = url.rsplit(":", 1)[1]
    return (
        f"the provider at {url} saw none of these calls, yet they ended: the workers call "
        f"another address. A worker's 'worker:' line says which; start it with DEMO_API_PORT={port}"
    )


def earlier_run_left(
    tasks: ModuleType, scenarios: list[Scenario], api: Mapping[str, str]
) -> str | None:
    """Invocations an earlier run left unfinished would run inside this one, and their calls
    would count as its own: what to say instead of starting."""
    left = leftovers.unfinished(tasks, {s.task for s in scenarios}, leftovers.UNFINISHED)
    if not left:
        return None
    where, _ = state_and_start(api)
    return (
        f"{left.total()} invocations of an earlier run are still unfinished on {where} "
        f"({report.listed(left)}); they would run inside this one. Wait until the workers have run "
        "them, or give this run a state of its own (DEMO_DB=other.db, and a worker on it)"
    )


def cancel_unpicked(tasks: ModuleType, scenario: Scenario, workers_left: bool = True) -> str:
    """End the scenario's invocations no worker has picked up (leftovers.cancel), and say what
    it ended and what it left."""
    cancelled = leftovers.cancel(tasks, scenario.task, workers_left)
    said = f"{cancelled} invocations no worker had picked up are cancelled (never to run)"
    if left := leftovers.unfinished(tasks, {scenario.task}, leftovers.UNFINISHED):
        said += f"; left as they are: {report.listed(left)}"
    return said
