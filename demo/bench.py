"""sample.py --bench: the same rounds and a scaled run on pynenc's ThreadRunner, then on fresh
workers of the wake runner; both side by side, then where the whole run's time went.

It prints figures and asserts nothing: docs/speed.md says what they were here.
"""

import argparse
import time
from collections.abc import Callable

from demo import report, show
from demo.processes import peak_memory_mib
from demo.scenarios import SCENARIOS, Outcome, Shape
from demo.stack import Stack

ROUNDS = 5
SCALED = Shape(accounts=30, ops=4, hold=0.1)
RUNNERS = ("thread", "wake")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bench",
        action="store_true",
        help=f"benchmark: {ROUNDS} rounds (or --rounds), then a scaled run; print figures",
    )
    parser.add_argument(
        "--bench-accounts",
        type=int,
        default=SCALED.accounts,
        metavar="N",
        help=f"accounts in --bench's scaled run (default {SCALED.accounts})",
    )


def refuse_bad_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage and exit 2 for a benchmark that cannot run as asked."""
    if not 1 <= args.bench_accounts <= 500:
        parser.error("--bench-accounts must be 1..500")
    if args.bench and args.runner != "thread":
        parser.error("--bench runs both the thread and the wake runner by itself: drop --runner")


def scaled(
    stack: Stack, accounts: int, like: Shape, timeout: float, view: show.View
) -> list[Outcome]:
    """Every scenario once at the scaled size, on the workers and threads of `like`; shown only
    where it broke a promise, then its efficiency."""
    shape = Shape(accounts, SCALED.ops, SCALED.hold, workers=like.workers, threads=like.threads)
    print(f"\n=== scaled run: {shape.accounts} accounts x {shape.ops} ops, hold {shape.hold}s ===")
    stack.where = "the scaled run"
    big = [
        show.scenario(
            s,
            shape,
            stack.provider,
            stack.tasks,
            timeout,
            view,
            f"scaled {s.letter}. {s.key}",
            stack.check,
            quiet=True,
        )
        for s in SCENARIOS.values()
    ]
    print(report.efficiency(big))
    return big


def run(stack: Stack, play: Callable[[str], tuple[int, list[Outcome]]], began: float) -> int:
    """play(runner) on each runner in turn, fresh workers for each; the comparison, then the
    whole run's phases (measured in this process) and the workers' peak memory."""
    ready = time.monotonic()
    code, results = 0, {}
    for n, runner in enumerate(RUNNERS):
        if n:  # fresh workers of the next kind, on the same API and state
            stack.replace_workers(DEMO_RUNNER=runner)
        print(f"\n##### {runner} runner #####")
        runner_code, results[runner] = play(runner)
        code = code or runner_code
    print(report.compare(results))
    done = time.monotonic()
    memory = [peak_memory_mib(w.proc.pid) for w in stack.workers]
    stack.stop()
    phases = {
        "start-up": ready - began,
        "scenarios": done - ready,
        "teardown": time.monotonic() - done,
    }
    shown = ", ".join(f"{name} {seconds:.2f}s" for name, seconds in phases.items())
    print(f"\nwhole run (in-process): {time.monotonic() - began:.2f}s = {shown}")
    print(f"worker peak memory: {', '.join(f'{m:.0f} MiB' for m in memory)}")
    return code
