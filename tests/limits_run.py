"""F and G alone, on workers sample.py starts, printing each run's counts as one JSON line.

Run it: uv run python tests/limits_run.py slots,rate --atomic-claim --workers 3   (sample.py's
flags after the scenarios; tests/test_limits.py runs it, on SQLite and on Redis)
"""

import json
import sys
from argparse import Namespace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sample
from demo import options, run, settings
from demo.scenarios import SCENARIOS
from demo.show import View
from demo.stack import Stack


def counts(args: Namespace, keys: list[str], stack: Stack) -> None:
    """Each scenario, `--rounds` times: one JSON line per run, the provider's counts."""
    shape = options.shape(args, workers=args.workers, threads=settings.slots_per_worker("thread"))
    for _ in range(args.rounds or 1):
        for key in keys:
            o = run.scenario(SCENARIOS[key], shape, stack.provider, stack.tasks, args.timeout)
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
                "broken": o.broken(),
            }
            print(json.dumps(found), flush=True)


def main(argv: list[str]) -> int:
    keys, rest = argv[0].split(","), argv[1:]
    args = sample.parse_args(rest)

    def body(stack: Stack, view: View) -> int:
        counts(args, keys, stack)
        return 0

    return sample.run(args, body)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
