"""The whole demo in one command: start the API and a worker, run all four scenarios, stop both.

Run it: uv run python sample.py     (--help for workers and Redis; rounds: python -m tools.stress)
"""

import argparse
import sys
from typing import TYPE_CHECKING

from demo import flags, launch, settings
from demo.stack import Sample, Stack

if TYPE_CHECKING:  # imported once the API and the worker are starting: docs/speed.md
    from pynenc import Pynenc

    from demo.show import View


def app() -> "Pynenc":
    """This process's app: tasks.py builds it from the run's settings, in the environment now.
    Loaded while the API and the worker boot, with enqueue.py's modules: the first enqueue then
    waits for nothing but them (docs/speed.md)."""
    import enqueue  # noqa: F401
    import tasks

    return tasks.app


# What the stack starts: workers on tasks.py's app, the provider of api_server.py.
SAMPLE = Sample(workers="tasks.app", api="api_server:app", load_app=app, fork=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = flags.StackParser("sample.py", __doc__.splitlines()[0])
    said = "at the end, print the seconds from the command to the first enqueue (tools.bench)"
    parser.add_argument("--start-up", action="store_true", help=said)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    settings.exit_on_bad_environment("sample.py")
    args = parse_args(argv)
    return launch.run(args, SAMPLE, lambda stack, view: play(args, stack, view))


def play(args: argparse.Namespace, stack: Stack, view: "View") -> int:
    """The scenarios through enqueue.py's own run, then the provider's log and the verdict."""
    import enqueue  # its tasks.py, built from the run's settings like the workers'

    chosen = [*enqueue.ARTICLE, *([enqueue.SCENARIOS["noisy"]] if args.noisy else [])]
    chosen += [s for s in enqueue.SCENARIOS.values() if s.limited] if args.limits else []
    if setup := flags.setup_line(args, args.runner):
        print(setup)
    outcomes = enqueue.play(chosen, launch.stage(args, stack, args.runner), view)
    print(f"\n--- the provider's call log ---\n{stack.api_log()}")
    code = launch.verdict(outcomes, stack, view)
    if args.start_up and outcomes:
        print(launch.start_up(outcomes[0], stack))
    return code


if __name__ == "__main__":
    sys.exit(main())
