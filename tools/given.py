"""What a tool runs, named on its command line as pynenc's and uvicorn's own commands name it.

The app the workers start with (`--app`, pynenc's form), the provider's app (`--api`,
uvicorn's form) and the scenario table (`--scenarios`, uvicorn's form). The tools import none
of the sample's files themselves: they load what these name, once the environment holds the
run's settings, as `pynenc --app` and `uvicorn` load theirs.
"""

import argparse
import functools

from pynenc.util.import_app import find_app_instance
from uvicorn.importer import import_from_string

from demo.scenarios import Scenario
from demo.stack import Sample


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for flag, default, what in (
        ("--app", "tasks.app", "the app the workers start with (pynenc --app)"),
        ("--api", "api_server:app", "the provider's ASGI app (uvicorn)"),
        ("--scenarios", "enqueue:SCENARIOS", "the scenario table, by key (module:name)"),
    ):
        parser.add_argument(flag, default=default, metavar="NAME", help=f"{what}; %(default)s")


def sample(args: argparse.Namespace, api: str | None = None) -> Sample:
    """The stack's sample; `api` instead of --api (the fault harness's held provider)."""
    return Sample(args.app, api or args.api, functools.partial(find_app_instance, args.app))


def scenarios(args: argparse.Namespace) -> dict[str, Scenario]:
    """The scenario table --scenarios names, loaded now (its module builds the app)."""
    return import_from_string(args.scenarios)


def article(args: argparse.Namespace) -> list[Scenario]:
    """The article's four: the table's scenarios without figures of their own or limits."""
    return [s for s in scenarios(args).values() if not (s.measure or s.limited)]


def chosen(args: argparse.Namespace) -> list[Scenario]:
    """The article's four; then E with --noisy, F and G with --limits."""
    table = scenarios(args).values()
    found = [*article(args), *([s for s in table if s.measure] if args.noisy else [])]
    return found + ([s for s in table if s.limited] if args.limits else [])
