"""The whole demo in one command: start the API and a worker, run all four scenarios, stop both.

Run it: uv run python sample.py     (--help for workers and Redis; rounds: python -m tools.stress)
"""

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import keyclaim
from demo import options, report, settings, show
from demo.outcome import Outcome
from demo.processes import stop_on_signals, stop_signal
from demo.scenarios import DEFAULT, LIMITED, SCENARIOS, Scenario
from demo.stack import FAILURES, RunRefused, Stack, preflight


def build_parser(description: str = __doc__.splitlines()[0]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sample.py", description=description)
    options.add_shape_arguments(parser)
    workers = settings.within(settings.whole_number, 1, 16)
    parser.add_argument("--workers", type=workers, default=1, help="runner processes to start")
    settings.add_option(parser, "--db", "DEMO_DB", "SQLite file")
    settings.add_option(
        parser,
        "--backend",
        "DEMO_BACKEND",
        "where pynenc keeps its state: sqlite or redis; redis uses REDIS_URL if set, "
        "else starts a private redis-server",
    )
    options.add_claim_arguments(parser)
    parser.add_argument(
        "--runner",
        choices=settings.RUNNER_NAMES,
        default=settings.get("DEMO_RUNNER"),
        help="which runner each worker is (env DEMO_RUNNER): the article's ThreadRunner, wake "
        f"(it starts the next call when one ends), MultiThreadRunner ({settings.PROCESSES} "
        "processes) or ProcessRunner",
    )
    parser.add_argument(
        "--noisy", action="store_true", help="also run E: one busy account beside quiet ones"
    )
    parser.add_argument(
        "--limits",
        action="store_true",
        help=f"also run F (up to {settings.SLOTS} calls in flight per account) and G (at most "
        f"{settings.RATE} calls a second per account): with --atomic-claim, which enforces them",
    )
    settings.add_option(
        parser,
        "--ready-timeout",
        "DEMO_READY_TIMEOUT",
        "deadline for the API and the workers to come up",
        metavar="S",
    )
    return parser


def parse_args(
    argv: list[str] | None, parsing: argparse.ArgumentParser | None = None
) -> argparse.Namespace:
    parsing = parsing or build_parser()
    args = parsing.parse_args(argv)
    if args.limits and not args.atomic_claim:
        parsing.error("--limits needs --atomic-claim: N per account and a rate are the claim's")
    return args


def main(argv: list[str] | None = None) -> int:
    settings.exit_on_bad_environment("sample.py")
    args = parse_args(argv)
    return run(args, lambda stack, view: play(args, stack, view, args.runner))


def run(
    args: argparse.Namespace,
    body: Callable[[Stack, show.View], int],
    make: Callable[..., Stack] = Stack,
) -> int:
    """body(stack, view) on a stack started from the flags (made by `make`), stopped on every
    way out; its exit code, or the one a refusal, a failure or a stop signal ends the run with."""
    # A private Redis stops with this run, and with it everything the monitor would show.
    private_redis = args.backend == "redis" and not settings.get("REDIS_URL")
    env = options.environment(args)
    log_dir = Path(settings.get("DEMO_LOG_DIR"))
    stack = make(env, log_dir, ready_timeout=args.ready_timeout, private_redis=private_redis)
    command = None if private_redis else settings.command("pynenc monitor", env)
    view = show.View(not args.no_chart, None if args.no_links else args.monitor_url, command)
    with stop_on_signals():
        try:
            preflight(args)
            # The one place this process's settings change: the stack then imports tasks.py,
            # which builds this process's app from them as the children build theirs.
            os.environ.update(env)
            with stack:
                stack.start(args.workers)
                # Its own API, owned for the whole run (it stops with it): an enqueue.py
                # pointed at it is refused instead of resetting the counts under it.
                with stack.provider.owned("sample.py", lease=3600):
                    code = body(stack, view)
        except (RunRefused, settings.BadSetting, keyclaim.Refused) as refused:  # or tasks.py's
            print(f"sample.py: {refused}", file=sys.stderr)
            return getattr(refused, "code", 2)
        except KeyboardInterrupt:
            code = 130  # the first stop signal; which one it was is kept (below)
        except FAILURES as exc:
            if refusal := getattr(exc, "refusal", ""):  # a child noticed a bad setting first
                print(f"sample.py: {refusal}", file=sys.stderr)
                return 2
            print(f"sample.py: {stack.explain(exc)}", file=sys.stderr)
            code = 1
        if signum := stop_signal():
            print("\nsample.py: interrupted; stopping the API and the workers.", file=sys.stderr)
            return 128 + signum  # 130 for Ctrl-C, 143 for SIGTERM, as shells report them
    return code


def chosen(args: argparse.Namespace) -> list[Scenario]:
    """The article's four; then E with --noisy, F and G with --limits."""
    noisy = [SCENARIOS["noisy"]] if args.noisy else []
    return [*DEFAULT, *noisy, *(LIMITED if args.limits else [])]


def play(args: argparse.Namespace, stack: Stack, view: show.View, runner: str) -> int:
    """The scenarios on `runner` workers, each shown as it ends; the provider's log, the verdict."""
    shape = options.shape(args, workers=args.workers, threads=settings.slots_per_worker(runner))
    if setup := options.setup_line(args, runner):
        print(setup)
    outcomes = []
    for each in chosen(args):
        stack.where = label = f"{each.letter}. {each.key}"
        outcomes.append(
            show.scenario(
                each, shape, stack.provider, stack.tasks, args.timeout, view, label, stack.check
            )
        )
    print(f"\n--- the provider's call log ---\n{stack.api_log()}")
    return verdict(outcomes, stack, view)


def verdict(outcomes: list[Outcome], stack: Stack, view: show.View) -> int:
    """The verdict's lines and the monitor's, printed; the exit code."""
    text, code = report.verdict(outcomes, stack.crashes)
    print(text)
    if ending := view.ending(outcomes):
        print(ending)
    return code


if __name__ == "__main__":
    sys.exit(main())
