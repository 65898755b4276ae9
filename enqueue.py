"""Enqueue one scenario, or all four, against a running API and worker; print what happened.

Run it: uv run python enqueue.py all      (or unsafe, keyed, drop, dedupe; or noisy, slots,
rate: not in all; slots and rate with DEMO_ATOMIC_CLAIM=1)
"""

import argparse
import functools
import importlib
import sys
from types import ModuleType

import keyclaim
from demo import live, options, settings, show, terminals
from demo.outcome import Outcome
from demo.provider import Provider, ProviderBusy, ProviderUnreachable
from demo.scenarios import DEFAULT, SCENARIOS, Scenario, Shape
from demo.terminals import BUSY_EXIT, NO_WORKER_EXIT, GaveUp, Interrupted


def say(line: str) -> None:
    print(f"enqueue.py: {line}", file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="enqueue.py", description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=[*SCENARIOS, "all"])
    options.add_shape_arguments(parser)
    parser.add_argument(
        "--atomic-claim",
        action="store_true",
        help="refused: the claim is read from DEMO_ATOMIC_CLAIM=1, set in every terminal",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    settings.exit_on_bad_environment("enqueue.py")
    parser = build_parser()
    args = parser.parse_args(argv)
    # The API it calls is the one its workers must call: the hints name it (demo/terminals.py).
    api = {"DEMO_API_HOST": args.host, "DEMO_API_PORT": str(args.port)}
    if args.atomic_claim and settings.get("DEMO_ATOMIC_CLAIM") != "1":
        parser.error(
            "--atomic-claim: tasks.py reads the claim from the environment, in every process "
            "that enqueues or runs: set DEMO_ATOMIC_CLAIM=1 in this terminal and the workers'"
        )

    try:  # this process's app, built from the same settings as the workers'
        tasks = importlib.import_module("tasks")
    except (settings.BadSetting, keyclaim.Refused) as refused:
        say(str(refused))
        return 2
    chosen = DEFAULT if args.scenario == "all" else [SCENARIOS[args.scenario]]
    if any(s.limited for s in chosen) and settings.get("DEMO_ATOMIC_CLAIM") != "1":
        say(
            f"{args.scenario} needs the claim, which enforces its limit per account "
            "(keyclaim.limit): set DEMO_ATOMIC_CLAIM=1 in this terminal and the workers'"
        )
        return 2
    view = show.View(not args.no_chart, None if args.no_links else args.monitor_url)
    provider = Provider(settings.api_url(args.host, args.port))
    try:
        provider.health()
        # A worker still starting is waited for: it joins the fleet before its first beat.
        mixed = functools.partial(keyclaim.inspect.fleet_problem, tasks.app)
        try:
            runners, why_none = live.awaited(tasks.app, say, refused=mixed)
        except KeyboardInterrupt:
            print(
                "\nenqueue.py: interrupted while waiting for a worker; nothing was enqueued",
                file=sys.stderr,
            )
            return 130
        if why := mixed():  # its calls would break the claim
            say(why)
            return 2
        if not runners:
            # Nothing would run what is enqueued: say so now, and leave nothing behind.
            say(terminals.no_worker(api, why_none))
            return NO_WORKER_EXIT
        # The floors count every live worker's threads.
        shape = options.shape(args, workers=max(1, live.calling(runners)))
        # The provider's counts are this run's alone: a second run is refused, not mixed in.
        with provider.owned(f"enqueue.py {args.scenario}", lease=2 * args.timeout + 60):
            if earlier := terminals.earlier_run_left(tasks, list(SCENARIOS.values()), api):
                say(earlier)
                return BUSY_EXIT
            if shape.workers > 1:
                threads = shape.workers * shape.threads
                print(
                    f"--- {shape.workers} workers live ({threads} threads): the floors count them"
                )
            outcomes = play(tasks, chosen, shape, provider, args.timeout, view, api)
    except Interrupted as left:
        print(f"\nenqueue.py: interrupted; {left}", file=sys.stderr)
        return 130
    except (GaveUp, ProviderBusy, ProviderUnreachable, live.StateUnreachable) as exc:
        say(str(exc))  # no worker left; another run; no API, or no Redis
        return {GaveUp: NO_WORKER_EXIT, ProviderBusy: BUSY_EXIT}.get(type(exc), 1)
    return 1 if any(o.broken() for o in outcomes) else 0


def play(
    tasks: ModuleType,
    chosen: list[Scenario],
    shape: Shape,
    provider: Provider,
    timeout: float,
    view: show.View,
    api: dict[str, str],
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
            raise GaveUp(terminals.no_worker_left(tasks, scenario, api)) from None
        except KeyboardInterrupt:
            raise Interrupted(terminals.cancel_unpicked(tasks, scenario)) from None
        outcomes.append(o)
        if o.invocations and not o.calls and not o.unfinished:
            print(f"  {terminals.elsewhere(provider.base_url)}", flush=True)
        if o.unfinished:
            print(f"  gave up: {terminals.cancel_unpicked(tasks, scenario)}", flush=True)
            return outcomes
    if len(outcomes) > 1 and (link := view.whole_run(outcomes)):
        print(f"\n{link}", flush=True)
    return outcomes


if __name__ == "__main__":
    sys.exit(main())
