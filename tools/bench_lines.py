"""One side of the bench's comparison: B, scaled B, E (and F, G), in a process of its own.

Run by tools/bench.py for each of its SIDES, on fresh state and fresh wake-runner workers: every
process of a deployment installs the same classes, the one that enqueues too, so the sides
cannot share a process. A sampled E run leaves the rest of its backlog queued, which would run
ahead of the next one's, so each E backlog after the first gets a process of its own (--no-b).
By hand:

    uv run python -m tools.bench_lines --claim 1 --backlogs 1000 --limits

It prints its figures as it goes, then one line `figures: {json}` for tools/bench.py to compare.
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

from demo import flags, redis_server, report, settings, show
from demo.outcome import Outcome
from demo.processes import free_port
from demo.provider import Provider
from demo.scenarios import HOLD_SECONDS, QUIET_ACCOUNTS, Shape
from demo.signals import stop_on_signals
from demo.stack import FAILURES, Stack
from demo.steps import Stage
from tools import given, stress
from tools.bench import ROUNDS, SCALED, backlogs

E_HOLD = 0.1  # as the scaled run's
E_SAMPLE = 50  # calls of the busy account timed, after which its backlog is left unrun
E_TIMEOUT = 600.0


def ceiling(provider: Provider, calls: int = E_SAMPLE, hold: float = E_HOLD) -> float:
    """E's busy account with nothing between its calls: one httpx client sends `calls` calls of
    one account in a row, shaped as the tasks send them (a key and a growing token each), and
    the provider's timeline says how close they came to their floor. What is left is this
    host's HTTP and its wake-ups, the most any worker could reach here and now."""
    provider.reset("E's ceiling: one client, no queue", hold)
    account = f"bare-{secrets.token_hex(4)}"  # fenced by no token an earlier run kept
    for n in range(1, calls + 1):
        key = {"Idempotency-Key": secrets.token_hex(8)}
        answer = provider.http.post(f"/call/{account}/op{n:03d}", params={"token": n}, headers=key)
        if answer.is_error or answer.json()["outcome"] != "ok":  # not held: no figure
            raise RuntimeError(f"E's ceiling: the provider answered {answer.text}")
    timeline = provider.timeline()
    span = max(c["end"] for c in timeline) - min(c["start"] for c in timeline)
    return calls * hold / span


def figures(
    article: list[Outcome],
    scaled: Outcome | None,
    noisy: list[Outcome],
    dedupe: list[Outcome],
    bare: float | None = None,
) -> dict[str, object]:
    """Median elapsed and floor of B (and F, G) and of scaled B, each E run's figures, E's
    ceiling on this host (bare), and D's calls over its rounds (min, typical, max)."""
    found: dict[str, object] = {} if bare is None else {"ceiling": bare}
    if calls := sorted(o.calls for o in dedupe):
        found["D calls"] = [calls[0], statistics.median_low(calls), calls[-1], len(calls)]
    for letter in sorted({o.scenario.letter for o in article}):
        mine = [o for o in article if o.scenario.letter == letter]
        found[letter] = [statistics.median(o.elapsed for o in mine), mine[0].floor]
    if scaled is not None:
        found["B scaled"] = [scaled.elapsed, scaled.floor]
    for o in noisy:
        assert o.figures is not None
        waits = [w for w in o.figures.quiet_waits if not math.isnan(w)]
        found[f"E {o.shape.backlog}"] = {
            "quiet_longest": max(waits) if len(waits) == QUIET_ACCOUNTS else None,
            "hot_floor": o.figures.hot_floor,
            "in_order": o.figures.hot_out_of_place == 0,
            "writes": o.figures.writes,
            "reroutes": o.figures.reroutes,
        }
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--claim", choices=("0", "1"), required=True)
    parser.add_argument("--no-b", action="store_true", help="only E: no B, no scaled B")
    whole, number = flags.flag_type(settings.whole_number), flags.flag_type(settings.number)
    each = flags.flag_type(backlogs)
    parser.add_argument("--backlogs", type=each, default="1000", help="E's, comma-separated")
    parser.add_argument("--rounds", type=whole, default=ROUNDS)
    parser.add_argument("--hold", type=number, default=HOLD_SECONDS, help="B's")
    parser.add_argument("--accounts", type=whole, default=SCALED.accounts, help="scaled B's")
    parser.add_argument("--workers", type=whole, default=1)
    parser.add_argument("--backend", choices=("sqlite", "redis"), default="sqlite")
    kinds = "SQLite's connections: kept (keyclaim.keep_connections) or pynenc's own"
    parser.add_argument("--connections", choices=("kept", "pynenc"), default="kept", help=kinds)
    parser.add_argument("--limits", action="store_true", help="F and G too (with --claim 1)")
    parser.add_argument("--d-rounds", type=whole, default=0, help="D's rounds, after B's")
    slots = (
        "E on F's task (up to N in flight per account; with --claim 1): the quiet accounts' wait "
        "beside a busy account at its limit"
    )
    parser.add_argument("--slots", action="store_true", help=slots)
    given.add_arguments(parser)
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
    names += [f"D x {args.d_rounds}"] if args.d_rounds and not args.no_b else []
    part = ", ".join(names)
    print(f"\n##### {part}: wake runner, {args.workers} worker(s), {side} #####", flush=True)
    article: list[Outcome] = []
    scaled, runs, dedupe, bare = None, [], [], None
    private = args.backend == "redis"
    sample = given.sample(args)
    with stop_on_signals(), Stack(env, folder / "logs", sample, private_redis=private) as s:
        try:
            s.start(args.workers)
            table = given.scenarios(args)
            keyed, noisy, slots = table["keyed"], table["noisy"], table["slots"]
            if args.slots:  # the busy account at its limit of N in flight, not 1
                title = f"{noisy.title}, up to {slots.slots} in flight per account"
                noisy = dataclasses.replace(noisy, task=slots.task, title=title)
            stage = Stage(s.provider, Shape(hold=args.hold, workers=args.workers), 60, s.check)
            if not args.no_b:
                limited = [x for x in table.values() if x.limited] if args.limits else []
                article = stress.rounds(stage, args.rounds, view, True, [keyed, *limited])
                print(report.efficiency(article))
                stage.shape = Shape(args.accounts, SCALED.ops, SCALED.hold, workers=args.workers)
                (scaled,) = stress.rounds(stage, 1, view, True, [keyed], prefix="scaled ")
                print(report.efficiency([scaled]).replace("B. keyed ", "B. scaled"))
                stage.shape = Shape(hold=args.hold, workers=args.workers)
                dedupe = stress.rounds(stage, args.d_rounds, view, True, [table["dedupe"]])
            stage.timeout = E_TIMEOUT
            if args.backlogs:  # before E: a backlog left unrun keeps the worker busy after it
                bare = ceiling(s.provider)
                print(f"E's ceiling here: {E_SAMPLE} calls in a row, no queue: {bare:.0%}")
            for backlog in args.backlogs:
                stage.shape = Shape(
                    hold=E_HOLD, backlog=backlog, sample=E_SAMPLE, workers=args.workers
                )
                runs += stress.rounds(stage, 1, view, False, [noisy], prefix=f"backlog {backlog}, ")
            if counted := stress.claims(s.app):
                print(counted, flush=True)
        except KeyboardInterrupt:
            return 130
        except FAILURES as exc:
            print(f"bench_lines: {s.explain(exc)}", file=sys.stderr)
            return 1
    print(f"figures: {json.dumps(figures(article, scaled, runs, dedupe, bare))}", flush=True)
    ran = [*article, *runs, *dedupe] + ([scaled] if scaled else [])
    return 1 if any(o.broken() for o in ran) else 0


if __name__ == "__main__":
    sys.exit(main())
