"""The scenarios in rounds, on several workers, runners or hosts: the stress runs measured.

Run it: uv run python -m tools.stress --atomic-claim --workers 6 --rounds 30   (sample.py's
flags, and --rounds, --hosts, --batch; --help)

It runs on a stack started as sample.py starts one (what it runs named by --app, --api and
--scenarios: tools/given.py) and prints the rounds, then tables: min / typical / max per
scenario, the efficiency against the floor, and the claim's own count. docs/scale-out.md
holds what they were; tools/bench.py runs the same rounds on two runners.
"""

import argparse
import contextlib
import os
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import keyclaim
from demo import flags, launch, settings, show, steps
from demo.outcome import Outcome
from demo.processes import Child
from demo.report import efficiency
from demo.scenarios import Scenario
from demo.stack import ROOT, Stack
from demo.steps import Stage
from tools import given
from tools.tables import distribution, one_line

if TYPE_CHECKING:
    from pynenc import Pynenc

HOSTS = ", each from its own copy of the project"
PACKAGES = ("demo", "stand_in")  # what a host's copy of the project holds besides the app's module
TICKS = os.sysconf("SC_CLK_TCK")  # /proc's CPU times are counted in these


def build_parser(
    description: str = __doc__.splitlines()[0], prog: str = "python -m tools.stress"
) -> argparse.ArgumentParser:
    """sample.py's flags, what the tools are given, and the rounds' own."""
    parser = flags.StackParser(prog, description)
    given.add_arguments(parser)
    rounds = flags.within(settings.whole_number, 1, 1000)
    parser.add_argument("--rounds", type=rounds, default=1, help="repeat the scenarios N times")
    hosts = (
        "with --backend redis: start each worker from its own copy of the project, sharing only "
        "REDIS_URL and the API's address, as on separate machines"
    )
    parser.add_argument("--hosts", action="store_true", help=hosts)
    batch = "with --atomic-claim: enqueue each scenario's calls as one parallelize (not D's)"
    parser.add_argument("--batch", action="store_true", help=batch)
    cpu = "print each scenario's CPU per call, in ms, for each process: docs/speed.md"
    parser.add_argument("--cpu", action="store_true", help=cpu)
    return parser


def parse_args(
    argv: list[str] | None, parsing: argparse.ArgumentParser | None = None
) -> argparse.Namespace:
    parsing = parsing or build_parser()
    args = parsing.parse_args(argv)
    if args.hosts and args.backend != "redis":
        parsing.error("--hosts needs --backend redis: separate machines share no SQLite file")
    if args.batch and not args.atomic_claim:
        parsing.error("--batch needs --atomic-claim: pynenc's own batch skips the key index")
    return args


def main(argv: list[str] | None = None) -> int:
    settings.exit_on_bad_environment("tools/stress.py")
    args = parse_args(argv)
    return run(args, lambda stack, view: play(args, stack, view, args.runner)[0])


class Rounds(Stack):
    """sample.py's stack, for the rounds: a worker that dies is replaced, as a supervisor would,
    since the rounds measure N workers; the bench replaces them all with another runner's."""

    several = False

    def start(self, workers: int) -> None:
        self.several = workers > 1  # one worker's death leaves nothing to measure: the run stops
        super().start(workers)

    def replace(self, dead: Child) -> None:
        if self.several:
            self.spawn_worker(int(dead.name.split()[-1]))

    def replace_workers(self, **changes: str) -> None:
        """Stop the live workers, start as many with `changes` in their environment (tools/bench.py:
        the next runner), on the same API and state; the crash list starts empty."""
        count = len(self.workers)
        self.stop(self.workers)
        self.env.update(changes)
        self.crashes = []
        fresh = [self.spawn_worker(number) for number in range(1, count + 1)]
        self.wait_ready(fresh)


class SeparateHosts(Rounds):
    """A stack whose workers each start from a copy of the project, as on machines of their own."""

    def worker_cwd(self, number: int) -> Path:
        host = (self.log_dir / "hosts" / f"host-{number}").resolve()
        shutil.rmtree(host, ignore_errors=True)
        host.mkdir(parents=True)
        # The workers' app's module, and the packages beside it that the sample's files import.
        module = self.sample.workers.rsplit(".", 1)[0]
        shutil.copy2(ROOT / f"{module}.py", host / f"{module}.py")
        for package in PACKAGES:
            ignore = shutil.ignore_patterns("__pycache__")
            shutil.copytree(ROOT / package, host / package, ignore=ignore)
        return host


def run(args: argparse.Namespace, body: Callable[[Stack, show.View], int]) -> int:
    """launch.run on the given sample, on separate hosts with --hosts."""
    make = SeparateHosts if args.hosts else Rounds
    return launch.run(args, given.sample(args), body, make, prog="tools/stress.py")


def play(
    args: argparse.Namespace, stack: Stack, view: show.View, runner: str, quiet: bool = False
) -> tuple[int, list[Outcome]]:
    """The rounds on `runner` workers, their tables, the verdict. quiet: each scenario shown only
    where it broke a promise (the benchmark's)."""
    if setup := flags.setup_line(args, runner, HOSTS if args.hosts else ""):
        print(setup)
    chosen = given.chosen(args)
    stage = launch.stage(args, stack, runner)
    metered = stack if args.cpu else None
    outcomes = rounds(stage, args.rounds, view, quiet, chosen, batch=args.batch, metered=metered)
    print(distribution(outcomes, chosen))
    print(efficiency(outcomes))
    if counted := claims(stack.app):
        print(counted)
    return launch.verdict(outcomes, stack, view), outcomes


def rounds(
    stage: Stage,
    rounds: int,
    view: show.View,
    quiet: bool,
    chosen: list[Scenario],
    prefix: str = "",
    batch: bool = False,
    metered: Stack | None = None,
) -> list[Outcome]:
    """The chosen scenarios, in order, `rounds` times, on the stage's API and workers.

    Each is run as enqueue.py runs one, shown in the first round and wherever it broke a
    promise (quiet: only there); one line sums up each of several rounds; with `metered`, each
    scenario's CPU per call for each of that stack's processes and this one. A worker or the API
    that dies stops it (the stage's check), unless a dead worker is replaced. It returns every
    outcome, in the order run; the verdict is the caller's.
    """
    outcomes: list[Outcome] = []
    for round_no in range(1, rounds + 1):
        this_round = []
        for each in chosen:
            label = prefix + each.label
            label = label if rounds == 1 else f"round {round_no}/{rounds}, {label}"
            stage.provider.reset(each.heading, stage.shape.hold, **each.quota)
            before = cpu_seconds(metered)
            sent = steps.enqueue(each, stage.shape, batch)
            steps.wait(sent, stage, label)
            found = steps.outcome(sent, stage.provider)
            if metered:
                print(f"  {label}: {per_call(before, cpu_seconds(metered), found.invocations)}")
            this_round.append(show.outcome(found, view, quiet=quiet or round_no > 1))
        outcomes += this_round
        if rounds > 1:
            print(f"round {round_no}/{rounds}: {one_line(this_round)}", flush=True)
    return outcomes


def cpu_seconds(stack: Stack | None) -> Counter[str]:
    """CPU seconds so far: this process's (the producer's) and each live child's, by kind."""
    found: Counter[str] = Counter()
    for child in stack.started if stack else []:
        with contextlib.suppress(OSError):  # gone
            fields = Path(f"/proc/{child.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            found[child.name.split()[0]] += (int(fields[11]) + int(fields[12])) / TICKS
    found["producer"] = time.process_time()
    return found


def per_call(before: Counter[str], after: Counter[str], calls: int) -> str:
    spent = {name: (after[name] - before[name]) * 1000 / max(calls, 1) for name in after}
    shown = ", ".join(f"{name} {ms:.2f}" for name, ms in sorted(spent.items()))
    return f"CPU per call, ms: {shown}; all {sum(spent.values()):.2f}"


def claims(app: "Pynenc") -> str:
    """The atomic claim's own count: claims made, and the tries a Redis WATCH conflict cost;
    "" without the claim."""
    if (found := keyclaim.inspect.counts(app)) is None:
        return ""
    per = found["retries"] / found["claims"] if found["claims"] else 0.0
    return (
        f"claims: {found['claims']}, tried again after a conflict: {found['retries']} "
        f"({per:.2f} per claim)"
    )


if __name__ == "__main__":
    sys.exit(main())
