"""Enqueue one scenario, or all four, against a running API and worker; print what happened.

Run it: uv run python enqueue.py all      (or unsafe, keyed, drop, dedupe)
"""

import argparse
import os
import sys

from demo import settings

CHOICES = ("unsafe", "keyed", "drop", "dedupe", "all")


def add_shape_arguments(parser: argparse.ArgumentParser) -> None:
    """The knobs enqueue.py and sample.py share; the defaults reproduce the article."""
    parser.add_argument("--accounts", type=int, default=len(settings.ACCOUNTS), metavar="N")
    parser.add_argument("--ops", type=int, default=len(settings.OPS), metavar="M")
    parser.add_argument("--hold", type=float, default=settings.HOLD_SECONDS, metavar="S")
    settings.add_option(
        parser,
        "--timeout",
        "DEMO_TIMEOUT",
        "deadline per scenario for every invocation to finish",
        metavar="S",
    )
    settings.add_option(parser, "--host", "DEMO_API_HOST", "the API's host")
    settings.add_option(parser, "--port", "DEMO_API_PORT", "the API's port")
    parser.add_argument("--no-chart", action="store_true", help="skip the lane charts")
    settings.add_option(
        parser, "--monitor-url", "DEMO_MONITOR_URL", "where `pynenc monitor` answers, for the links"
    )
    parser.add_argument(
        "--no-links", action="store_true", help="print no links into the monitor's timeline"
    )


def check_shape_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not 1 <= args.accounts <= 500 or not 1 <= args.ops <= 100:
        parser.error("--accounts must be 1..500 and --ops 1..100")
    if not 0 <= args.hold <= 30:
        parser.error("--hold must be between 0 and 30 seconds")
    os.environ["DEMO_API_HOST"] = args.host
    os.environ["DEMO_API_PORT"] = str(args.port)


def monitor_link(args: argparse.Namespace, start: float, end: float, what: str = "monitor") -> str:
    """One line with a link into the monitor's timeline, or nothing under --no-links."""
    if args.no_links:
        return ""
    from demo.monitor import timeline_url

    return f"  {what}: {timeline_url(args.monitor_url, start, end)}"


def whole_run_link(args: argparse.Namespace, outcomes: list) -> str:
    start, end = outcomes[0].window[0], outcomes[-1].window[1]
    return monitor_link(args, start, end, "the whole run")


def main(argv: list[str] | None = None) -> int:
    settings.exit_on_bad_environment("enqueue.py")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=CHOICES)
    add_shape_arguments(parser)
    args = parser.parse_args(argv)
    check_shape_arguments(parser, args)

    # Imported after the flags are in the environment: tasks.py reads it when it builds the app.
    from demo import lanes, progress, scenarios

    shape = scenarios.Shape(args.accounts, args.ops, args.hold)
    chosen = (
        scenarios.SCENARIOS.values()
        if args.scenario == "all"
        else [scenarios.SCENARIOS[args.scenario]]
    )
    provider = scenarios.Provider()
    try:
        provider.health()
        outcomes = []
        for scenario in chosen:
            label = f"{scenario.letter}. {scenario.key}"
            with progress.line(label, provider) as tick:
                outcome = scenarios.run(scenario, shape, provider, args.timeout, progress=tick)
            outcomes.append(outcome)
            print(outcome.summary(), flush=True)
            if link := monitor_link(args, *outcome.window):
                print(link, flush=True)
            if not args.no_chart:
                print(lanes.render(outcome.timeline), flush=True)
            if outcome.unfinished:
                return 1
        if len(outcomes) > 1 and (link := whole_run_link(args, outcomes)):
            print(f"\n{link}", flush=True)
    except scenarios.ProviderUnreachable as exc:
        print(f"enqueue.py: {exc}", file=sys.stderr)
        return 1
    return 1 if any(o.broken() for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
