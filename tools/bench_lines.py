"""One side of the bench's comparison: B, scaled B, E (and F, G), in a process of its own.

Run by tools/bench.py for stock pynenc (no lines, pynenc's SQLite connections), the atomic
claim on pynenc's connections, and the claim on kept ones (keyclaim.keep_connections), each on
fresh state and fresh wake-runner workers: every process of a deployment installs the same
classes, the one that enqueues too, so the sides cannot share a process. A
sampled E run leaves the rest of its backlog queued, which would run ahead of the next one's,
so each E backlog after the first gets a process of its own (--no-b). By hand:

    uv run python -m tools.bench_lines --claim 1 --backlogs 1000 --limits

It prints its figures as it goes, then one line `figures: {json}` for sample.py to compare.
"""

import argparse
import dataclasses
import json
import math
import os
import secrets
import statistics
import sys
import tempfile
from pathlib import Path

from demo import redis_server, report, settings, show
from demo.outcome import Outcome
from demo.processes import free_port, stop_on_signals
from demo.scenarios import LIMITED, SCENARIOS, Shape
from demo.stack import FAILURES, Stack
from tools import stress
from tools.bench import ROUNDS, SCALED, backlogs

E_HOLD = 0.1  # as the scaled run's
E_SAMPLE = 50  # calls of the busy account timed, after which its backlog is left unrun
E_TIMEOUT = 600.0


def figures(
    article: list[Outcome], scaled: Outcome | None, noisy: list[Outcome]
) -> dict[str, object]:
    """Median elapsed and floor of B (and F, G) and of scaled B, and each E run's figures."""
    found: dict[str, object] = {}
    for letter in sorted({o.scenario.letter for o in article}):
        mine = [o for o in article if o.scenario.letter == letter]
        found[letter] = [statistics.median(o.elapsed for o in mine), mine[0].floor]
    if scaled is not None:
        found["B scaled"] = [scaled.elapsed, scaled.floor]
    for o in noisy:
        assert o.neighbours is not None
        waits = [w for w in o.neighbours.quiet_waits if not math.isnan(w)]
        found[f"E {o.shape.backlog}"] = {
            "quiet_longest": max(waits) if len(waits) == settings.QUIET_ACCOUNTS else None,
            "hot_floor": o.neighbours.hot_floor,
            "in_order": o.neighbours.hot_out_of_place == 0,
            "writes": o.neighbours.writes,
            "reroutes": o.neighbours.reroutes,
        }
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--claim", choices=("0", "1"), required=True)
    parser.add_argument("--no-b", action="store_true", help="only E: no B, no scaled B")
    whole, number = settings.flag_type(settings.whole_number), settings.flag_type(settings.number)
    parser.add_argument(
        "--backlogs", type=settings.flag_type(backlogs), default="1000", help="E's, comma-separated"
    )
    parser.add_argument("--rounds", type=whole, default=ROUNDS)
    parser.add_argument("--hold", type=number, default=settings.HOLD_SECONDS, help="B's")
    parser.add_argument("--accounts", type=whole, default=SCALED.accounts, help="scaled B's")
    parser.add_argument("--workers", type=whole, default=1)
    parser.add_argument("--backend", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument(
        "--connections",
        choices=("kept", "pynenc"),
        default="kept",
        help="SQLite's connections: kept (keyclaim.keep_connections) or pynenc's own",
    )
    parser.add_argument("--limits", action="store_true", help="F and G too (with --claim 1)")
    parser.add_argument(
        "--slots",
        action="store_true",
        help=f"E on tasks.py's call_slots (up to {settings.SLOTS} in flight per account; "
        "with --claim 1): the quiet accounts' wait beside a busy account at its limit",
    )
    args = parser.parse_args(argv)
    if (args.slots or args.limits) and args.claim != "1":
        parser.error("--slots and --limits need --claim 1: N per account is the claim's")
    with tempfile.TemporaryDirectory(prefix="bench-lines-", ignore_cleanup_errors=True) as tmp:
        return side(args, Path(tmp))


def side(args: argparse.Namespace, folder: Path) -> int:
    """One side's runs on a fresh database in `folder`; prints `figures: {json}` at the end."""
    env = {
        "DEMO_API_PORT": str(free_port()),
        "DEMO_API_INSTANCE": secrets.token_hex(8),
        "DEMO_BACKEND": args.backend,
        "DEMO_DB": str(folder / "bench.db"),
        "DEMO_ATOMIC_CLAIM": args.claim,
        "DEMO_RUNNER": "wake",
        "DEMO_LOG_LEVEL": "warning",
        "DEMO_SQLITE_CONNECTIONS": args.connections,
    }
    if args.backend == "redis":
        env["REDIS_URL"] = redis_server.private_url()
    os.environ.update(env)  # this process enqueues: its app is built like the workers'
    view = show.View(charts=False)
    side = "with the lines (--atomic-claim)" if args.claim == "1" else "without the lines"
    side += f", {args.connections}'s SQLite connections".replace("kept's", "kept")
    names = ([] if args.no_b else ["B", "scaled B"]) + [f"E at {n:,}" for n in args.backlogs]
    names += ["F", "G"] if args.limits and not args.no_b else []
    part = ", ".join(names)
    print(f"\n##### {part}: wake runner, {args.workers} worker(s), {side} #####", flush=True)
    article: list[Outcome] = []
    scaled, runs = None, []
    with stop_on_signals(), Stack(env, folder / "logs", private_redis=args.backend == "redis") as s:
        try:
            s.start(args.workers)
            keyed, noisy = SCENARIOS["keyed"], SCENARIOS["noisy"]
            if args.slots:  # the busy account at its limit of N in flight, not 1
                title = f"{noisy.title}, up to {settings.SLOTS} in flight per account"
                noisy = dataclasses.replace(
                    noisy, task="call_slots", slots=settings.SLOTS, title=title
                )
            if not args.no_b:
                shape = Shape(hold=args.hold, workers=args.workers)
                chosen = [keyed, *(LIMITED if args.limits else [])]
                article = stress.rounds(s, shape, args.rounds, 60, view, True, chosen)
                print(report.efficiency(article))
                size = Shape(args.accounts, SCALED.ops, SCALED.hold, workers=args.workers)
                scaled = show.scenario(
                    keyed, size, s.provider, s.tasks, 60, view, "scaled", quiet=True
                )
                print(report.efficiency([scaled]).replace("B. keyed ", "B. scaled"))
            for backlog in args.backlogs:
                e = Shape(hold=E_HOLD, backlog=backlog, sample=E_SAMPLE, workers=args.workers)
                label = f"E, a backlog of {backlog}"
                runs.append(show.scenario(noisy, e, s.provider, s.tasks, E_TIMEOUT, view, label))
            if counted := stress.claims(s.tasks.app):
                print(counted, flush=True)
        except KeyboardInterrupt:
            return 130
        except FAILURES as exc:
            print(f"bench_lines: {s.explain(exc)}", file=sys.stderr)
            return 1
    print(f"figures: {json.dumps(figures(article, scaled, runs))}", flush=True)
    return 1 if any(o.broken() for o in [*article, *runs] + ([scaled] if scaled else [])) else 0


if __name__ == "__main__":
    sys.exit(main())
