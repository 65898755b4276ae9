"""A soak: the keyed scenario in rounds over many accounts for minutes, the store's size watched.

Run it: uv run python -m tools.soak --minutes 30 --every 5 --workers 3 [--backend redis]
[--atomic-claim]   (tools/stress.py's flags; --accounts, --hold: the load's size)

Every --every minutes one row: minutes elapsed, calls the provider got, collisions so far, the
store's totals (tools/store_size.py), and each worker's RSS; under it, the detail. The last
line says whether the store and the workers stayed flat after the first window: each total and
each worker's RSS at the end within FLAT of its value at the first row. Exit 1 if a round broke
a guarantee (a collision, a call applied twice, an invocation failed or never finished).
"""

import argparse
import sys
import time

import psutil

from demo import flags, launch, settings, show
from demo.stack import Stack
from tools import given, store_size, stress

FLAT = 0.10  # growth after the first window still called flat: 10 %


def main(argv: list[str] | None = None) -> int:
    settings.exit_on_bad_environment("tools/soak.py")
    parser = stress.build_parser(__doc__.splitlines()[0], "python -m tools.soak")
    minutes = flags.within(settings.number, 0.01, 7 * 24 * 60)
    parser.add_argument("--minutes", type=minutes, default=30.0, help="how long (default 30)")
    parser.add_argument("--every", type=minutes, default=5.0, help="minutes between rows")
    parser.set_defaults(accounts=100, hold=0.05)
    args = stress.parse_args(argv, parser)
    return stress.run(args, lambda stack, view: soak(args, stack, view))


def soak(args: argparse.Namespace, stack: Stack, view: show.View) -> int:
    """Rounds until the minutes are up, a row after each window; the verdict."""
    keyed = given.scenarios(args)["keyed"]
    stage = launch.stage(args, stack, args.runner)
    print(f"--- soak: {args.minutes:g} min, {args.workers} worker(s), {args.accounts} accounts")
    started = time.monotonic()
    due, ends = started + args.every * 60, started + args.minutes * 60
    outcomes, rows = [], []
    while not rows or time.monotonic() < ends:
        outcomes += stress.rounds(stage, 1, view, True, [keyed])
        if time.monotonic() >= min(due, ends):
            totals, detail = store_size.reading(stack.app)
            rss = [_rss(w.proc.pid) for w in stack.workers]
            rows.append({**totals, **{f"rss {n}": r for n, r in enumerate(rss, 1)}})
            minute = (time.monotonic() - started) / 60
            calls, collisions = (
                sum(getattr(o, c) for o in outcomes) for c in ("calls", "collisions")
            )
            print(
                f"{minute:7.2f} min  calls {calls:>9,}  collisions {collisions}  "
                f"{store_size.line(totals)}  rss MB {' '.join(f'{r >> 20}' for r in rss)}"
            )
            print("          " + " ".join(f"{k}={v}" for k, v in detail.items()), flush=True)
            due += args.every * 60
    grown = {k: v / rows[0][k] - 1 for k, v in rows[-1].items() if rows[0].get(k)}
    over = ", ".join(f"{k} +{g:.0%}" for k, g in grown.items() if g > FLAT)
    verdict = "unknown (one window)" if len(rows) < 2 else f"no: {over}" if over else "yes"
    print(f"flat after the first window (each reading within {FLAT:.0%} of it): {verdict}")
    broken = [o for o in outcomes if o.broken()]
    print(f"rounds: {len(outcomes)}, broke a guarantee: {len(broken)}")
    return 1 if broken else 0


def _rss(pid: int) -> int:
    """The worker's resident memory with its children's (a process runner's)."""
    try:
        process = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])
    except psutil.NoSuchProcess:
        return 0


if __name__ == "__main__":
    sys.exit(main())
