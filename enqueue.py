"""Enqueue one scenario, or all four, against a running API and worker; print what happened.

Run it: uv run python enqueue.py all      (or unsafe, keyed, drop, dedupe; or noisy, not in all)
"""

import argparse
import sys

import tasks
from demo import live, options, settings, show
from demo.provider import Provider, ProviderBusy, ProviderUnreachable
from demo.scenarios import DEFAULT, SCENARIOS, Outcome, Scenario, Shape

NO_WORKER_EXIT = 3
BUSY_EXIT = 4


def no_worker() -> str:
    """Where no worker was found, and the command that starts one there."""
    runner = "pynenc --app tasks.app runner start"
    if settings.get("DEMO_BACKEND") == "redis":
        url = settings.get("REDIS_URL")
        where = f"the Redis at {url}"
        start = f"DEMO_BACKEND=redis REDIS_URL={url} uv run --isolated --group redis {runner}"
    else:
        where = settings.get("DEMO_DB")
        named = "" if where == settings.DEFAULTS["DEMO_DB"] else f"DEMO_DB={where} "
        start = f"{named}uv run {runner}"
    return (
        f"no worker is running on {where} (no runner heartbeat in the last "
        f"{live.ALIVE_WITHIN:g}s), so nothing was enqueued; start one in another terminal: {start}"
    )


def elsewhere(url: str) -> str:
    """Every invocation ended, and not one call reached this provider."""
    port = url.rsplit(":", 1)[1]
    return (
        f"the provider at {url} saw none of these calls, yet they ended: the workers call "
        f"another address. A worker's first line says which; start it with DEMO_API_PORT={port}"
    )


def main(argv: list[str] | None = None) -> int:
    settings.exit_on_bad_environment("enqueue.py")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=[*SCENARIOS, "all"])
    options.add_shape_arguments(parser)
    args = parser.parse_args(argv)
    options.refuse_bad_shape(parser, args)

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
        if shape.workers > 1:
            threads = shape.workers * shape.threads
            print(f"--- {shape.workers} workers live ({threads} threads): the floors count them")
        # The provider's counts are this run's alone: a second run is refused, not mixed in.
        with provider.owned(f"enqueue.py {args.scenario}", lease=2 * args.timeout + 60):
            outcomes = play(chosen, shape, provider, args.timeout, view)
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
        outcomes.append(show.scenario(scenario, shape, provider, tasks, timeout, view, label))
        if (o := outcomes[-1]).invocations and not o.calls and not o.unfinished:
            print(f"  {elsewhere(provider.base_url)}", flush=True)
        if o.unfinished:
            return outcomes
    if len(outcomes) > 1 and (link := view.whole_run(outcomes)):
        print(f"\n{link}", flush=True)
    return outcomes


if __name__ == "__main__":
    sys.exit(main())
