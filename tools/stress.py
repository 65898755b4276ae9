"""The scenarios in rounds, on several workers, runners or hosts: the stress runs measured.

Run it: uv run python -m tools.stress --atomic-claim --workers 6 --rounds 30   (sample.py's
flags, and --rounds, --hosts; --help)

It runs on sample.py's stack, shows each scenario in the first round and wherever it broke a
promise, sums up each round in one line, then all of them in tables: min / typical / max per
scenario, the efficiency against the floor, and the claim's own count. docs/scale-out.md
holds what they were; tools/bench.py runs the same rounds on two runners.
"""

import argparse
import shutil
import statistics
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import keyclaim
import sample
from demo import options, report, settings, show
from demo.outcome import Outcome
from demo.processes import Child
from demo.scenarios import DEFAULT, Scenario, Shape
from demo.stack import ROOT, Stack

if TYPE_CHECKING:
    from pynenc import Pynenc

COLUMNS = ("calls", "collisions", "extra_calls", "dropped", "deduped", "late", "unfinished")
HOSTS = ", each from its own copy of the project"


def build_parser(description: str = __doc__.splitlines()[0]) -> argparse.ArgumentParser:
    """sample.py's flags, and the rounds' own."""
    parser = sample.build_parser(description)
    parser.prog = "python -m tools.stress"
    rounds = settings.within(settings.whole_number, 1, 1000)
    parser.add_argument("--rounds", type=rounds, default=1, help="repeat the scenarios N times")
    parser.add_argument(
        "--hosts",
        action="store_true",
        help="with --backend redis: start each worker from its own copy of the project, "
        "sharing only REDIS_URL and the API's address, as on separate machines",
    )
    return parser


def parse_args(
    argv: list[str] | None, parsing: argparse.ArgumentParser | None = None
) -> argparse.Namespace:
    parsing = parsing or build_parser()
    args = sample.parse_args(argv, parsing)
    if args.hosts and args.backend != "redis":
        parsing.error("--hosts needs --backend redis: separate machines share no SQLite file")
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
        """Stop the live workers and start as many fresh ones with `changes` in their
        environment (tools/bench.py: the next runner), on the same API and state. Their crash list
        starts empty."""
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
        shutil.copy2(ROOT / "tasks.py", host / "tasks.py")
        shutil.copytree(ROOT / "demo", host / "demo", ignore=shutil.ignore_patterns("__pycache__"))
        return host


def run(args: argparse.Namespace, body: Callable[[Stack, show.View], int]) -> int:
    """sample.run, on separate hosts with --hosts."""
    return sample.run(args, body, SeparateHosts if args.hosts else Rounds)


def play(
    args: argparse.Namespace, stack: Stack, view: show.View, runner: str, quiet: bool = False
) -> tuple[int, list[Outcome]]:
    """The rounds on `runner` workers, their tables, the verdict. quiet: each scenario shown only
    where it broke a promise (the benchmark's)."""
    shape = options.shape(args, workers=args.workers, threads=settings.slots_per_worker(runner))
    if setup := options.setup_line(args, runner, HOSTS if args.hosts else ""):
        print(setup)
    outcomes = rounds(stack, shape, args.rounds, args.timeout, view, quiet, sample.chosen(args))
    print(distribution(outcomes))
    print(report.efficiency(outcomes))
    if counted := claims(stack.tasks.app):
        print(counted)
    return sample.verdict(outcomes, stack, view), outcomes


def rounds(
    stack: Stack,
    shape: Shape,
    rounds: int,
    timeout: float,
    view: show.View,
    quiet: bool = False,
    chosen: list[Scenario] = DEFAULT,
) -> list[Outcome]:
    """The chosen scenarios (the article's four), in order, `rounds` times, on the stack's
    API and workers.

    Each is shown as show.scenario() shows it: in the first round, and in any round where it broke a
    promise (quiet: only there). After each of several rounds, one line sums the round up. A
    worker or the API that dies stops it at once (stack.check), unless a dead worker is
    replaced; every scenario runs to the end otherwise, whatever it found. It returns every
    outcome, in the order run; the verdict is the caller's.
    """
    outcomes: list[Outcome] = []
    for round_no in range(1, rounds + 1):
        this_round = []
        for each in chosen:
            stack.where = f"round {round_no}, {each.letter}. {each.key}"
            label = f"{each.letter}. {each.key}"
            if rounds > 1:
                label = f"round {round_no}/{rounds}, {label}"
            quiet_now = quiet or round_no > 1
            this_round.append(
                show.scenario(
                    each,
                    shape,
                    stack.provider,
                    stack.tasks,
                    timeout,
                    view,
                    label,
                    stack.check,
                    quiet_now,
                )
            )
        outcomes += this_round
        if rounds > 1:
            print(f"round {round_no}/{rounds}: {one_line(this_round)}", flush=True)
    return outcomes


def one_line(outcomes: list[Outcome]) -> str:
    """One round in a line: letter, calls/collisions, and anything unusual."""
    parts = []
    for o in outcomes:
        text = f"{o.scenario.letter} {o.calls}/{o.collisions}"
        if o.fenced:
            text += f" fenced={o.fenced}"
        if o.scenario.limited:
            text += f" throttled={o.throttled} peak={o.peak_in_flight}"
        if o.replayed or o.conflicts:
            text += f" replayed={o.replayed} 409={o.conflicts}"
        if o.late:
            text += f" late={len(o.late)}"
        if o.unfinished:
            text += f" unfinished={len(o.unfinished)}"
        parts.append(text + ("" if not o.broken() else " BROKEN"))
    return "  ".join(parts)


def _scenarios(outcomes: list[Outcome]) -> list[Scenario]:
    """The scenarios these outcomes ran, in the order they first ran."""
    return list(dict.fromkeys(o.scenario for o in outcomes))


def _value(outcome: Outcome, column: str) -> int:
    value = getattr(outcome, column)
    return len(value) if isinstance(value, list | dict) else value


def distribution(outcomes: list[Outcome]) -> str:
    """Per scenario and measure: min / typical (median) / max over the rounds."""
    rounds = max(Counter(o.scenario for o in outcomes).values())
    columns = COLUMNS
    if any(o.scenario.limited for o in outcomes):  # F, G: their quota's own columns
        columns = (*COLUMNS, "throttled", "peak_in_flight")
    header = f"{'scenario':<10}" + "".join(
        f"{c.replace('_calls', '').replace('_in_flight', ''):>14}" for c in columns
    )
    lines = ["", f"=== {rounds} rounds: min / typical / max ===", header]
    for scenario in _scenarios(outcomes):
        mine = [o for o in outcomes if o.scenario is scenario]
        cells = []
        for column in columns:
            values = [_value(o, column) for o in mine]
            cells.append(f"{min(values)}/{statistics.median_low(values)}/{max(values)}")
        broken = sum(1 for o in mine if o.broken())
        note = f"  broken in {broken} of {len(mine)}" if broken else ""
        lines.append(
            f"{scenario.letter}. {scenario.key:<7}" + "".join(f"{c:>14}" for c in cells) + note
        )
    keyed = [o for o in outcomes if o.scenario.keyed]
    # Every keyed scenario of the demo, even one that did not run, and any other that did.
    named = dict.fromkeys([*(s for s in DEFAULT if s.keyed), *_scenarios(keyed)])
    by_letter = ", ".join(
        f"{s.letter} {sum(o.collisions for o in keyed if o.scenario is s)}" for s in named
    )
    lines.append(
        f"totals: {sum(o.collisions for o in keyed)} collisions under KEYS ({by_letter}), "
        f"{sum(o.extra_calls for o in outcomes)} extra calls, "
        f"{sum(len(o.late) for o in outcomes)} late, "
        f"{sum(len(o.unfinished) for o in outcomes)} never finished"
        + (f", {fenced} fenced" if (fenced := sum(o.fenced for o in outcomes)) else "")
        + (
            f", {sum(o.throttled for o in outcomes)} throttled"
            if any(o.scenario.limited for o in outcomes)
            else ""
        )
    )
    return "\n".join(lines)


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
