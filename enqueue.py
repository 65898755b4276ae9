"""Enqueue one scenario, or all four, against a running API and worker; print what happened.

Run it: uv run python enqueue.py all      (or unsafe, keyed, drop, dedupe; or noisy, not in all)
"""

import argparse
import sys
from collections import Counter

from pynenc.invocation.status import InvocationStatus as S
from pynenc.runner.runner_context import RunnerContext

import tasks
from demo import live, options, settings, show
from demo.provider import Provider, ProviderBusy, ProviderUnreachable
from demo.scenarios import DEFAULT, SCENARIOS, Outcome, Scenario, Shape

NO_WORKER_EXIT = 3


class GaveUp(Exception):
    """The run stopped waiting: what happened, and what it left behind."""


BUSY_EXIT = 4


def state_and_start() -> tuple[str, str]:
    """Where the workers should be, and the command that starts one there."""
    runner = "pynenc --app tasks.app runner start"
    if settings.get("DEMO_BACKEND") == "redis":
        url = settings.get("REDIS_URL")
        start = f"DEMO_BACKEND=redis REDIS_URL={url} uv run --isolated --group redis {runner}"
        return f"the Redis at {url}", start
    db = settings.get("DEMO_DB")
    named = "" if db == settings.DEFAULTS["DEMO_DB"] else f"DEMO_DB={db} "
    return db, f"{named}uv run {runner}"


def no_worker() -> str:
    where, start = state_and_start()
    return (
        f"no worker is running on {where} (no runner heartbeat in the last "
        f"{live.ALIVE_WITHIN:g}s), so nothing was enqueued; start one in another terminal: {start}"
    )


def no_worker_left(scenario: Scenario) -> str:
    where, start = state_and_start()
    return (
        f"every worker on {where} stopped mid-run; {cancel_unpicked(scenario)}; "
        f"start one in another terminal: {start}"
    )


def elsewhere(url: str) -> str:
    """Every invocation ended, and not one call reached this provider."""
    port = url.rsplit(":", 1)[1]
    return (
        f"the provider at {url} saw none of these calls, yet they ended: the workers call "
        f"another address. A worker's first line says which; start it with DEMO_API_PORT={port}"
    )


def cancel_unpicked(scenario: Scenario) -> str:
    """End the scenario's invocations no worker has picked up, so that none runs inside a
    later run, and say what was left: pynenc lets a REGISTERED invocation end as
    CONCURRENCY_CONTROLLED_FINAL (never run); one rerouted, pending or running cannot be
    ended from outside its worker."""
    orchestrator, task = tasks.app.orchestrator, getattr(tasks, scenario.task)
    ctx = RunnerContext(runner_cls="enqueue.py")
    unpicked = list(orchestrator.get_existing_invocations(task, statuses=[S.REGISTERED]))
    for invocation_id in unpicked:
        orchestrator.set_invocation_status(invocation_id, S.CONCURRENCY_CONTROLLED_FINAL, ctx)
    others = [s for s in S if not s.is_final() and s != S.REGISTERED]
    left = Counter(
        orchestrator.get_invocation_status(i).value
        for i in orchestrator.get_existing_invocations(task, statuses=others)
    )
    said = f"{len(unpicked)} invocations no worker had picked up are cancelled (never to run)"
    if left:
        said += "; left as they are: " + ", ".join(f"{n} {st}" for st, n in left.most_common())
    return said


def main(argv: list[str] | None = None) -> int:
    settings.exit_on_bad_environment("enqueue.py")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=[*SCENARIOS, "all"])
    options.add_shape_arguments(parser)
    parser.add_argument(
        "--atomic-claim",
        action="store_true",
        help="refused: the claim is read from DEMO_ATOMIC_CLAIM=1, set in every terminal",
    )
    args = parser.parse_args(argv)
    options.refuse_bad_shape(parser, args)
    if args.atomic_claim and settings.get("DEMO_ATOMIC_CLAIM") != "1":
        parser.error(
            "--atomic-claim: tasks.py reads the claim from the environment, in every process "
            "that enqueues or runs: set DEMO_ATOMIC_CLAIM=1 in this terminal and the workers'"
        )

    chosen = DEFAULT if args.scenario == "all" else [SCENARIOS[args.scenario]]
    view = show.View(not args.no_chart, None if args.no_links else args.monitor_url)
    provider = Provider(options.api_url(args))
    try:
        provider.health()
        if not (runners := live.in_app(tasks.app)):
            # Nothing would run what is enqueued: say so now, and leave nothing behind.
            print(f"enqueue.py: {no_worker()}", file=sys.stderr)
            return NO_WORKER_EXIT
        # The floors count every live worker's threads.
        shape = options.shape(args, workers=max(1, live.calling(runners)))
        # The provider's counts are this run's alone: a second run is refused, not mixed in.
        with provider.owned(f"enqueue.py {args.scenario}", lease=2 * args.timeout + 60):
            if shape.workers > 1:
                threads = shape.workers * shape.threads
                print(
                    f"--- {shape.workers} workers live ({threads} threads): the floors count them"
                )
            outcomes = play(chosen, shape, provider, args.timeout, view)
    except GaveUp as gave_up:
        print(f"enqueue.py: {gave_up}", file=sys.stderr)
        return NO_WORKER_EXIT
    except ProviderBusy as exc:
        print(f"enqueue.py: {exc}", file=sys.stderr)
        return BUSY_EXIT
    except ProviderUnreachable as exc:
        print(f"enqueue.py: {exc}", file=sys.stderr)
        return 1
    return 1 if any(o.broken() for o in outcomes) else 0


def play(
    chosen: list[Scenario], shape: Shape, provider: Provider, timeout: float, view: show.View
) -> list[Outcome]:
    """Each scenario in turn, shown as it ends; it stops at one that left work unfinished."""
    outcomes = []
    for scenario in chosen:
        label = f"{scenario.letter}. {scenario.key}"
        # Every worker gone mid-run: said at once, not after the deadline.
        check = live.watching(tasks.app)
        try:
            o = show.scenario(scenario, shape, provider, tasks, timeout, view, label, check)
        except live.NoWorkerLeft:
            raise GaveUp(no_worker_left(scenario)) from None
        outcomes.append(o)
        if o.invocations and not o.calls and not o.unfinished:
            print(f"  {elsewhere(provider.base_url)}", flush=True)
        if o.unfinished:
            print(f"  gave up: {cancel_unpicked(scenario)}", flush=True)
            return outcomes
    if len(outcomes) > 1 and (link := view.whole_run(outcomes)):
        print(f"\n{link}", flush=True)
    return outcomes


if __name__ == "__main__":
    sys.exit(main())
