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
from demo.scenarios import Outcome, Shape
from demo.stack import FAILURES, Refused, Stack, preflight


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_shape_arguments(parser)
    parser.add_argument("--rounds", type=int, default=None, help="repeat the scenarios N times")
    parser.add_argument("--workers", type=int, default=1, help="runner processes to start")
    settings.add_option(parser, "--db", "DEMO_DB", "SQLite file")
    settings.add_option(
        parser,
        "--backend",
        "DEMO_BACKEND",
        "where pynenc keeps its state: sqlite or redis; redis uses REDIS_URL if set, "
        "else starts a private redis-server",
    )
    parser.add_argument(
        "--atomic-claim",
        action="store_true",
        default=settings.get("DEMO_ATOMIC_CLAIM") == "1",
        help="check the key and claim in one atomic step, so one call per account holds across "
        "workers (env DEMO_ATOMIC_CLAIM=1; demo/atomic_claim.py)",
    )
    settings.add_option(
        parser,
        "--dead-after",
        "DEMO_DEAD_AFTER",
        "with --atomic-claim: seconds without a heartbeat before a runner's claims are recovered",
        metavar="S",
    )
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
            preflight(args.host, args.port, args.backend, args.db, args.atomic_claim)
            # The one place this process's settings change: the stack then imports tasks.py,
            # which builds this process's app from them as the children build theirs.
            os.environ.update(env)
            with stack:
                stack.start(args.workers)
                if args.bench:
                    code = bench.run(stack, lambda runner: play(args, stack, view, runner), began)
                else:
                    code, _ = play(args, stack, view, args.runner)
        except Refused as refused:
            print(f"sample.py: {refused}", file=sys.stderr)
            return refused.code
        except KeyboardInterrupt:
            code = 130  # the first stop signal; which one it was is kept (below)
        except FAILURES as exc:
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
    slots = settings.slots_per_worker(runner)
    shape = Shape(args.accounts, args.ops, args.hold, workers=args.workers, threads=slots)
    if args.workers > 1 or args.atomic_claim or args.hosts or runner != "thread":
        claim = f"on, dead after {args.dead_after:g}s" if args.atomic_claim else "off"
        where = ", each from its own copy of the project" if args.hosts else ""
        kind = "" if runner == "thread" else f" ({runner} runner)"
        print(f"--- {args.backend}, {args.workers} worker(s){kind}{where}; atomic claim {claim}")
    rounds = args.rounds or (bench.ROUNDS if args.bench else 1)
    outcomes = show.rounds(stack, shape, rounds, args.timeout, view, quiet=args.bench)
    if rounds == 1 and not args.bench:
        print(f"\n--- the provider's call log ---\n{stack.api_log()}")
    else:
        print(report.distribution(outcomes))
        print(report.efficiency(outcomes))
    if args.bench:
        outcomes += bench.scaled(stack, args.bench_accounts, shape, args.timeout, view)
    text, code = report.verdict(outcomes, stack.crashes)
    print(text)
    if ending := view.ending(outcomes):
        print(ending)
    return code, outcomes


if __name__ == "__main__":
    sys.exit(main())
