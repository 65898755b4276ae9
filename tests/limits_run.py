"""F and G alone, on workers sample.py starts, printing each run's counts as one JSON line.

Run it: uv run python tests/limits_run.py slots,rate --atomic-claim --workers 3   (the flags
of tools/stress.py after the scenarios; tests/test_limits.py runs it, on SQLite and on Redis)
"""

import json
import sys
from argparse import Namespace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from demo import launch, tiers
from demo.outcome import Outcome
from demo.show import View
from demo.stack import Stack
from tools import given, stress


def recounted(timeline: list[dict]) -> dict[str, int]:
    """Each account's most calls applied at once, recounted from the timeline's starts and
    ends (a call ending as another starts is not an overlap, as the provider counts)."""
    peaks: dict[str, int] = {}
    for call in timeline:
        if call["fenced"] or call["throttled"]:
            continue
        at, name = call["start"], call["account_id"]
        live = [
            c
            for c in timeline
            if c["account_id"] == name
            and not (c["fenced"] or c["throttled"])
            and c["start"] <= at < c["end"]
        ]
        peaks[name] = max(peaks.get(name, 0), len(live))
    return peaks


def under_last_limit(o: Outcome) -> dict[str, list[int]]:
    """H: for each account whose limit changed, its last limit and how many calls started
    under it (as the provider counted them)."""
    limits = o.figures.report["limits"] if isinstance(o.figures, tiers.TierFigures) else {}
    return {
        name: [
            each[-1]["slots"],
            sum(
                1 for c in o.timeline if c["account_id"] == name and c["start"] >= each[-1]["since"]
            ),
        ]
        for name, each in limits.items()
    }


def counts(args: Namespace, keys: list[str], stack: Stack) -> None:
    """Each scenario, `--rounds` times: one JSON line per run, the provider's counts."""
    stage, table = launch.stage(args, stack, "thread"), given.scenarios(args)
    for _ in range(args.rounds):
        for key in keys:
            (o,) = stress.rounds(stage, 1, View(charts=False), True, [table[key]])
            found = {
                "scenario": key,
                "enqueued": o.enqueued,
                "applied": o.applied,
                "collisions": o.collisions,
                "throttled": o.throttled,
                "fenced": o.fenced,
                "unfinished": len(o.unfinished),
                "failed": o.failed,
                "peaks": {name: a["peak_in_flight"] for name, a in o.per_account.items()},
                "recounted": recounted(o.timeline),
                "broken": o.broken(),
                "under_last_limit": under_last_limit(o),
            }
            print(json.dumps(found), flush=True)


def main(argv: list[str]) -> int:
    keys, rest = argv[0].split(","), argv[1:]
    args = stress.parse_args(rest)

    def body(stack: Stack, view: View) -> int:
        counts(args, keys, stack)
        return 0

    return stress.run(args, body)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
