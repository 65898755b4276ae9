"""What enqueue.py checks before it enqueues, and what it says when the terminals disagree.

Before: an API, a live worker (one starting is waited for) with the claim settings of the others,
no other run, nothing an earlier run left unfinished. Mid-run: no worker left, or workers calling
another API. Each is said in one line, with its exit code.
"""

import argparse
import contextlib
import functools
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import keyclaim
from demo import flags, heartbeats, report, settings, unfinished
from demo.outcome import Outcome
from demo.provider import Provider, ProviderBusy, ProviderUnreachable
from demo.scenarios import Scenario
from demo.show import View
from demo.signals import stop_on_signals
from demo.steps import Stage

# The app a worker of this sample starts with, as the hints name it.
WORKERS_APP = "tasks.app"
NO_WORKER_EXIT = 3  # enqueue.py's exit code when no worker runs, or none is left
BUSY_EXIT = 4  # when another run owns the provider

# What a worker must share with this terminal to run its calls as this run expects.
SHARED = ("DEMO_API_HOST", "DEMO_API_PORT", "DEMO_ATOMIC_CLAIM", "DEMO_DEAD_AFTER")
SHARED += ("DEMO_CALL_TIMEOUT", "DEMO_RUNNER")


def state_and_start(api: Mapping[str, str]) -> tuple[str, str]:
    """Where the workers should be, and the command that starts one there with this terminal's
    settings that differ from the defaults (api: the API's address, as its flags say)."""
    start = settings.command(f"pynenc --app {WORKERS_APP} runner start", api, SHARED)
    if settings.get("DEMO_BACKEND") == "redis":
        return f"the Redis at {settings.get('REDIS_URL')}", start
    return settings.get("DEMO_DB"), start


def no_worker(api: Mapping[str, str], why: str = "") -> str:
    """why: what became of a worker seen starting (heartbeats.awaited)."""
    where, start = state_and_start(api)
    why = why or f"none beat in the last {heartbeats.ALIVE_WITHIN:g}s from a process still running"
    return (
        f"no worker is running on {where} ({why}), so nothing was enqueued; start one in "
        f"another terminal: {start}"
    )


def elsewhere(url: str) -> str:
    """Every invocation ended, and not one call reached this provider."""
    port = url.rsplit(":", 1)[1]
    return (
        f"the provider at {url} saw none of these calls, yet they ended: the workers call "
        f"another address. A worker's 'worker:' line says which; start it with DEMO_API_PORT={port}"
    )


def earlier_run_left(scenarios: list[Scenario], api: Mapping[str, str]) -> str | None:
    """Invocations an earlier run left unfinished would run inside this one, and their calls
    would count as its own: what to say instead of starting."""
    left = unfinished.by_status([s.task for s in scenarios], unfinished.STATUSES)
    if not left:
        return None
    where, _ = state_and_start(api)
    return (
        f"{left.total()} invocations of an earlier run are still unfinished on {where} "
        f"({report.listed(left)}); they would run inside this one. Wait until the workers have run "
        "them, or give this run a state of its own (DEMO_DB=other.db, and a worker on it)"
    )


def cancel_unpicked(scenario: Scenario, workers_left: bool = True) -> str:
    """End the scenario's invocations no worker has picked up (unfinished.cancel), and say what
    it ended and what it left."""
    cancelled = unfinished.cancel(scenario.task, workers_left)
    said = f"{cancelled} invocations no worker had picked up are cancelled (never to run)"
    if left := unfinished.by_status([scenario.task], unfinished.STATUSES):
        said += f"; left as they are: {report.listed(left)}"
    return said


@contextlib.contextmanager
def refused_in_one_line() -> Iterator[None]:
    """Around the import of the app's module: a bad setting or a claim the library refuses
    (keyclaim.Refused) is said in one line, named by the program that runs, and exit 2."""
    try:
        yield
    except (settings.BadSetting, keyclaim.Refused) as refused:
        print(f"{Path(sys.argv[0]).name}: {refused}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def say(line: str) -> None:
    print(f"enqueue.py: {line}", file=sys.stderr, flush=True)


def checked(
    args: argparse.Namespace,
    chosen: list[Scenario],
    every: Iterable[Scenario],
    play: Callable[[list[Scenario], Stage, View], list[Outcome]],
) -> int:
    """play(chosen, stage, view) once every check has passed; each refusal said in one line,
    with its exit code (2 settings, 3 no worker, 4 another run, 130 Ctrl-C). `every`: all the
    scenarios whose invocations an earlier run may have left. Exit 1 if a guarantee broke."""
    if any(s.limited for s in chosen) and settings.get("DEMO_ATOMIC_CLAIM") != "1":
        say(
            f"{args.scenario} needs the claim, which enforces its limit per account "
            "(keyclaim.limit): set DEMO_ATOMIC_CLAIM=1 in this terminal and the workers'"
        )
        return 2
    # The API it calls is the one its workers must call: the hints name it.
    api = {"DEMO_API_HOST": args.host, "DEMO_API_PORT": str(args.port)}
    view = View(not args.no_chart, None if args.no_links else args.monitor_url)
    provider, app = Provider(settings.api_url(args.host, args.port)), chosen[0].task.app
    stage = Stage(provider, flags.shape(args), args.timeout, heartbeats.watching(app))
    try:
        provider.health()
        # A worker still starting is waited for: it joins the fleet before its first beat.
        mixed = functools.partial(keyclaim.inspect.fleet_problem, app)
        try:
            with stop_on_signals():  # a Ctrl-C whose raise was lost is raised at the next look
                runners, why_none = heartbeats.awaited(app, say, refused=mixed)
        except KeyboardInterrupt:
            waiting = "interrupted while waiting for a worker; nothing was enqueued"
            print(f"\nenqueue.py: {waiting}", file=sys.stderr)
            return 130
        if why := mixed():  # its calls would break the claim
            say(why)
            return 2
        if not runners:  # nothing would run what is enqueued: say so, and leave nothing behind
            say(no_worker(api, why_none))
            return NO_WORKER_EXIT
        # The floors count every live worker's threads.
        stage.shape = flags.shape(args, workers=max(1, heartbeats.calling(runners)))
        # The provider's counts are this run's alone: a second run is refused, not mixed in.
        with provider.owned(f"enqueue.py {args.scenario}", lease=2 * args.timeout + 60):
            if earlier := earlier_run_left(list(every), api):
                say(earlier)
                return BUSY_EXIT
            if (workers := stage.shape.workers) > 1:
                threads = workers * stage.shape.threads
                print(f"--- {workers} workers live ({threads} threads): the floors count them")
            outcomes = play(chosen, stage, view)
    except heartbeats.NoWorkerLeft:  # every worker gone mid-run: said at once, not at the deadline
        where, start = state_and_start(api)
        cancelled = cancel_unpicked(_running(chosen, stage), workers_left=False)
        say(
            f"every worker on {where} stopped mid-run; {cancelled}; start one in another terminal: "
            f"{start}"
        )
        return NO_WORKER_EXIT
    except KeyboardInterrupt:
        left = cancel_unpicked(_running(chosen, stage))
        print(f"\nenqueue.py: interrupted; {left}", file=sys.stderr)
        return 130
    except (ProviderBusy, ProviderUnreachable, heartbeats.StateUnreachable) as exc:
        say(str(exc))  # another run; no API, or no Redis
        return BUSY_EXIT if isinstance(exc, ProviderBusy) else 1
    if len(outcomes) > 1 and (link := view.whole_run(outcomes)):
        print(f"\n{link}", flush=True)
    return 1 if any(o.broken() for o in outcomes) else 0


def _running(chosen: list[Scenario], stage: Stage) -> Scenario:
    """The scenario the stage was waiting on (its label), or the first."""
    return next((s for s in chosen if s.label == stage.where), chosen[0])
