"""The whole demo in one command: start the API and a worker, run all four scenarios, stop both.

Run it: uv run python sample.py        (--help for rounds, workers, Redis and the benchmark)
"""

import argparse
import os
import sys
import time
from pathlib import Path

from demo import bench, options, report, settings, show
from demo.processes import stop_on_signals, stop_signal
from demo.scenarios import DEFAULT, SCENARIOS, Outcome
from demo.stack import FAILURES, RunRefused, Stack, preflight


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_shape_arguments(parser)
    whole = settings.flag_type(settings.whole_number)
    parser.add_argument("--rounds", type=whole, default=None, help="repeat the scenarios N times")
    parser.add_argument("--workers", type=whole, default=1, help="runner processes to start")
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
        "--hosts",
        action="store_true",
        default=settings.get("DEMO_HOSTS") == "1",
        help="with --backend redis: start each worker from its own copy of the project, "
        "sharing only REDIS_URL and the API's address, as on separate machines (env DEMO_HOSTS=1)",
    )
    parser.add_argument(
        "--noisy", action="store_true", help="also run E: one busy account beside quiet ones"
    )
    bench.add_arguments(parser)
    settings.add_option(
        parser,
        "--ready-timeout",
        "DEMO_READY_TIMEOUT",
        "deadline for the API and the workers to come up",
        metavar="S",
    )
    args = parser.parse_args(argv)
    options.refuse_bad_shape(parser, args)
    if args.rounds is not None and not 1 <= args.rounds <= 1000 or not 1 <= args.workers <= 16:
        parser.error("--rounds must be 1..1000 and --workers 1..16")
    bench.refuse_bad_arguments(parser, args)
    if args.hosts and args.backend != "redis":
        parser.error("--hosts needs --backend redis: separate machines share no SQLite file")
    return args


def main(argv: list[str] | None = None) -> int:
    began = time.monotonic()
    settings.exit_on_bad_environment("sample.py")
    args = parse_args(argv)
    # A private Redis stops with this run, and with it everything the monitor would show.
    private_redis = args.backend == "redis" and not settings.get("REDIS_URL")
    env = options.environment(args)
    stack = Stack(
        env,
        Path(settings.get("DEMO_LOG_DIR")),
        ready_timeout=args.ready_timeout,
        hosts=args.hosts,
        private_redis=private_redis,
    )
    command = None if private_redis else show.monitor_command(env)
    view = show.View(not args.no_chart, None if args.no_links else args.monitor_url, command)
    with stop_on_signals():
        try:
            windows = (args.dead_after, args.call_timeout)
            preflight(args.host, args.port, args.backend, args.db, args.atomic_claim, windows)
            # The one place this process's settings change: the stack then imports tasks.py,
            # which builds this process's app from them as the children build theirs.
            os.environ.update(env)
            with stack:
                stack.start(args.workers)
                # Its own API, owned for the whole run (it stops with it): an enqueue.py
                # pointed at it is refused instead of resetting the counts under it.
                with stack.provider.owned("sample.py", lease=3600):
                    if args.bench:
                        code = bench.run(stack, lambda r: play(args, stack, view, r), began)
                        code = bench.lines(args, stack.log_dir) or code
                    else:
                        code, _ = play(args, stack, view, args.runner)
        except RunRefused as refused:
            print(f"sample.py: {refused}", file=sys.stderr)
            return refused.code
        except KeyboardInterrupt:
            code = 130  # the first stop signal; which one it was is kept (below)
        except FAILURES as exc:
            if refusal := getattr(exc, "refusal", ""):  # a child noticed a bad setting first
                print(refusal, file=sys.stderr)
                return 2
            print(f"sample.py: {stack.explain(exc)}", file=sys.stderr)
            code = 1
        if signum := stop_signal():
            print("\nsample.py: interrupted; stopping the API and the workers.", file=sys.stderr)
            return 128 + signum  # 130 for Ctrl-C, 143 for SIGTERM, as shells report them
    return code


def play(
    args: argparse.Namespace, stack: Stack, view: show.View, runner: str
) -> tuple[int, list[Outcome]]:
    """The scenarios on `runner` workers: the rounds, their tables, the verdict."""
    shape = options.shape(args, workers=args.workers, threads=settings.slots_per_worker(runner))
    if setup := options.setup_line(args, runner):
        print(setup)
    rounds = args.rounds or (bench.ROUNDS if args.bench else 1)
    chosen = [*DEFAULT, SCENARIOS["noisy"]] if args.noisy else DEFAULT
    outcomes = show.rounds(stack, shape, rounds, args.timeout, view, args.bench, chosen)
    if rounds == 1 and not args.bench:
        print(f"\n--- the provider's call log ---\n{stack.api_log()}")
    else:
        print(report.distribution(outcomes))
        print(report.efficiency(outcomes))
        if counted := report.claims(stack.tasks.app):
            print(counted)
    if args.bench:
        outcomes += bench.scaled(stack, args.bench_accounts, shape, args.timeout, view)
    text, code = report.verdict(outcomes, stack.crashes)
    print(text)
    if ending := view.ending(outcomes):
        print(ending)
    return code, outcomes


if __name__ == "__main__":
    sys.exit(main())
