"""The benchmark: the scenarios on pynenc's ThreadRunner and on the wake runner, side by side.

It runs the article's rounds and a scaled run on ThreadRunner workers, then the same on fresh
workers of the wake runner; both side by side, then where the whole run's time went, from the
command; then B, scaled B and E (a busy account beside quiet ones), F and G, and D's rounds on
stock pynenc, on the claim with pynenc's SQLite connections, and on the claim with kept ones
(keyclaim.keep_connections), the claim's on 3 workers too; then the rest of the targets
(tools/bench_targets.py): sample.py's start-up and, on request, B at 500 accounts.

Run it: uv run python -m tools.bench     (--rounds N, and sample.py's flags; --help)

It prints figures and asserts nothing: docs/speed.md says what they were here.
"""

import argparse
import contextlib
import json
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

from demo import flags, launch, report, settings, show
from demo.launch import command_began
from demo.outcome import Outcome
from demo.processes import Child, start_child, stop_children, wait_until
from demo.scenarios import MAX_BACKLOG, Shape
from demo.stack import ROOT, Stack
from tools import bench_targets as targets
from tools import given, stress
from tools.bench_targets import MANY
from tools.tables import compare, compare_lines

ROUNDS = 5
THREE = 3  # the workers of the bench's several-worker runs
SCALED = Shape(accounts=30, ops=4, hold=0.1)
RUNNERS = ("thread", "wake")


def build_parser() -> argparse.ArgumentParser:
    """tools.stress's flags (sample.py's and --rounds), and the bench's own."""
    parser = stress.build_parser(__doc__.splitlines()[0])
    parser.prog = "python -m tools.bench"
    parser.set_defaults(rounds=ROUNDS)
    whole, accounts = flags.flag_type(settings.whole_number), SCALED.accounts
    help = f"accounts in the scaled run (default {accounts})"
    parser.add_argument("--bench-accounts", type=whole, default=accounts, metavar="N", help=help)
    # 1,000 by default: stock pynenc's 10,000 runs for minutes by design (its churn), so the
    # long one is asked for: --bench-backlogs 1000,10000 (docs/speed.md's figures).
    each = "the busy account's backlogs in scenario E's runs (default %(default)s)"
    kind = flags.flag_type(backlogs)
    parser.add_argument("--bench-backlogs", type=kind, default="1000", metavar="N,N", help=each)
    for flag, default, what in (
        ("--bench-d-rounds", 20, "D's rounds on the wake runner, 1 worker and 3 (default 20)"),
        ("--bench-starts", 3, "runs of sample.py timed from the command (default 3)"),
        (
            "--bench-many",
            0,
            f"accounts of the B run on {MANY.workers} workers (500; default 0: none)",
        ),
    ):
        parser.add_argument(flag, type=whole, default=default, metavar="N", help=what)
    return parser


def main(argv: list[str] | None = None) -> int:
    settings.exit_on_bad_environment("tools/bench.py")
    parser = build_parser()
    args = stress.parse_args(argv, parser)
    if not 1 <= args.bench_accounts <= 500:
        parser.error("--bench-accounts must be 1..500")
    if args.runner != "thread":
        parser.error("the bench runs both the thread and the wake runner by itself: drop --runner")

    def bench(stack: Stack, view: show.View) -> int:
        code = run(stack, lambda runner: play(args, stack, view, runner))
        lines_code, found = lines(args, stack.log_dir)
        starts = targets.start_ups(args, stack.log_dir)
        many = targets.many(args, stack.log_dir) if args.bench_many else {}
        print(targets.table(found, starts, many, args.bench_many))
        return lines_code or code

    return stress.run(args, bench)


def backlogs(raw: str) -> list[int]:
    """--bench-backlogs, read as it is parsed: a bad one refused before the bench runs, not
    after. Nothing at all: no E runs."""
    with contextlib.suppress(ValueError):
        found = [settings.whole_number(n) for n in raw.split(",") if n]
        if all(1 <= n <= MAX_BACKLOG for n in found):
            return found
    raise ValueError(f"expected backlogs of 1..{MAX_BACKLOG} calls, comma-separated")


def play(
    args: argparse.Namespace, stack: Stack, view: show.View, runner: str
) -> tuple[int, list[Outcome]]:
    """tools.stress's rounds, quiet, on `runner` workers; then the article's scenarios once at
    the scaled size, on the same workers and threads: shown only where one broke a promise, then
    their efficiency and verdict."""
    code, outcomes = stress.play(args, stack, view, runner, quiet=True)
    stage, accounts = launch.stage(args, stack, runner), args.bench_accounts
    workers, threads = stage.shape.workers, stage.shape.threads
    stage.shape = Shape(accounts, SCALED.ops, SCALED.hold, workers=workers, threads=threads)
    print(f"\n=== scaled run: {accounts} accounts x {SCALED.ops} ops, hold {SCALED.hold}s ===")
    big = stress.rounds(stage, 1, view, True, given.article(args), prefix="scaled ")
    print(report.efficiency(big))
    text, scaled_code = report.verdict(big, stack.crashes)
    print(text)
    return code or scaled_code, outcomes + big


def run(stack: Stack, play: Callable[[str], tuple[int, list[Outcome]]]) -> int:
    """play(runner) on each runner in turn, fresh workers for each; the comparison, then the
    whole run's phases (from the command, as it began) and the workers' peak memory."""
    code, results = 0, {}
    for n, runner in enumerate(RUNNERS):
        if n:  # fresh workers of the next kind, on the same API and state
            stack.replace_workers(DEMO_RUNNER=runner)
        print(f"\n##### {runner} runner #####")
        runner_code, results[runner] = play(runner)
        code = code or runner_code
    print(compare(results))
    done = time.time()
    memory = [peak_memory_mib(w.proc.pid) for w in stack.workers]
    stack.stop()
    began, first = command_began(), results[RUNNERS[0]][0].window[0]  # the first enqueue
    phases = {"start-up": first - began, "scenarios": done - first, "teardown": time.time() - done}
    shown = ", ".join(f"{name} {seconds:.2f}s" for name, seconds in phases.items())
    print(f"\nwhole run (from the command): {time.time() - began:.2f}s = {shown}")
    print(f"worker peak memory: {', '.join(f'{m:.0f} MiB' for m in memory)}")
    return code


# How long one side of the lines comparison may take: two E runs of a long backlog included.
LINES_DEADLINE = 3600.0


# The sides of the last comparison: (name, --claim, --connections).
SIDES = (
    ("stock pynenc", "0", "pynenc"),
    ("claim, pynenc's", "1", "pynenc"),
    ("claim, kept", "1", "kept"),
)


def lines(args: argparse.Namespace, log_dir: Path) -> tuple[int, dict[str, dict[str, object]]]:
    """Each of SIDES in processes of its own (tools/bench_lines.py: the first backlog with B and
    D's rounds, then one per further backlog; with the claim, B and D on 3 workers too), its
    output shown as it comes; then the sides side by side. Their exit code and figures."""
    found: dict[str, dict[str, object]] = {name: {} for name, _, _ in SIDES}
    # (No backlog: one process per side, for B and scaled B alone.)
    each = [str(n) for n in args.bench_backlogs] or [""]
    code = 0
    for side, claim, connections in SIDES:
        runs = [(backlog, args.workers, n) for n, backlog in enumerate(each)]
        runs += [("", THREE, 0)] if claim == "1" else []  # without it, workers collide
        for backlog, workers, n in runs:
            argv = [sys.executable, "-m", "tools.bench_lines", "--claim", claim]
            argv += ["--no-b"] if n else (["--limits"] if claim == "1" else [])
            argv += ["--backlogs", backlog, "--rounds", str(args.rounds)]
            argv += ["--hold", str(args.hold), "--connections", connections]
            argv += ["--accounts", str(args.bench_accounts), "--workers", str(workers)]
            argv += ["--backend", args.backend, "--app", args.app, "--api", args.api]
            argv += ["--scenarios", args.scenarios, "--d-rounds", str(args.bench_d_rounds)]
            name = f"bench-claim{claim}-{connections}" + (f"-{backlog}" if n else "")
            name += f"-{workers}-workers" if workers == THREE else ""
            child = start_child(name, argv, log_dir / f"{name}.log", cwd=ROOT)
            try:
                lines_out = _follow(child)
            finally:
                stop_children([child])
            code = code or (child.proc.returncode or 0)
            for line in lines_out:
                if line.startswith("figures: "):
                    figures = json.loads(line.removeprefix("figures: "))
                    at = f" {THREE} workers" if workers == THREE else ""
                    found[side].update({key + at: value for key, value in figures.items()})
    if all("B" in side for side in found.values()):
        print(compare_lines(found))
    return code, found


def _follow(child: Child) -> list[str]:
    """Print the child's output as it comes, until it exits; return its lines."""
    shown = 0

    def more() -> bool:
        nonlocal shown
        child.log.flush()
        text = child.log_path.read_text(errors="replace")
        for line in text[shown:].splitlines(keepends=True):
            if not line.endswith("\n") and child.proc.poll() is None:
                break  # a line still being written
            if not line.startswith("figures: "):
                print(line, end="", flush=True)
            shown += len(line)
        return child.proc.poll() is not None and shown >= len(text)

    wait_until(more, LINES_DEADLINE, f"{child.name} to finish", interval=0.2)
    return child.log_path.read_text(errors="replace").splitlines()


def peak_memory_mib(pid: int) -> float:
    """The process's peak resident memory so far (Linux VmHWM), or 0 where unknown."""
    with contextlib.suppress(OSError):
        if found := re.search(r"^VmHWM:\s+(\d+)", Path(f"/proc/{pid}/status").read_text(), re.M):
            return int(found[1]) / 1024
    return 0.0


if __name__ == "__main__":
    sys.exit(main())
