"""What a tool runs, named on its command line as pynenc's and uvicorn's own commands name it.

The tools import none of the sample's files: they load what these name once the environment
holds the run's settings, as `pynenc --app` and `uvicorn` load theirs.
"""

import argparse
import functools
import importlib.util

from pynenc.util.import_app import find_app_instance
from uvicorn.importer import ImportFromStringError, import_from_string

from demo import flags
from demo.scenarios import Scenario
from demo.settings import BadSetting
from demo.stack import Sample


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for flag, default, what, sep in (
        ("--app", "tasks.app", "the app the workers start with (pynenc --app)", "."),
        ("--api", "api_server:app", "the provider's ASGI app (uvicorn)", ":"),
        ("--scenarios", "enqueue:SCENARIOS", "the scenario table, by key (module:name)", ":"),
    ):
        kind, help = flags.flag_type(functools.partial(_named, sep=sep)), f"{what}; %(default)s"
        parser.add_argument(flag, type=kind, default=default, metavar="NAME", help=help)


def _named(raw: str, sep: str) -> str:
    """A module this process can import, not imported yet (it builds the app), and a name."""
    module, _, name = raw.rpartition(sep)
    if not (module and name.isidentifier()):
        raise ValueError(f"expected module{sep}name")
    if importlib.util.find_spec(module) is None:
        raise ValueError(f"no module {module!r} here")
    return raw


def sample(args: argparse.Namespace, api: str | None = None) -> Sample:
    """The stack's sample; `api` instead of --api (the fault harness's held provider)."""
    return Sample(args.app, api or args.api, functools.partial(find_app_instance, args.app))


def scenarios(args: argparse.Namespace) -> dict[str, Scenario]:
    """The table --scenarios names, loaded now; BadSetting, in one line, if it is none."""
    try:
        table = import_from_string(args.scenarios)
    except ImportFromStringError as exc:
        raise BadSetting(f"--scenarios {args.scenarios!r}: {exc}") from None
    if not (isinstance(table, dict) and all(isinstance(s, Scenario) for s in table.values())):
        raise BadSetting(f"--scenarios {args.scenarios!r}: not a table of scenarios by key")
    return table


def article(args: argparse.Namespace) -> list[Scenario]:
    """The article's four: the table's scenarios without figures of their own or limits."""
    return [s for s in scenarios(args).values() if not (s.measure or s.limited)]


def chosen(args: argparse.Namespace) -> list[Scenario]:
    """The article's four; then E with --noisy, F and G with --limits."""
    table = scenarios(args).values()
    found = [*article(args), *([s for s in table if s.measure] if args.noisy else [])]
    return found + ([s for s in table if s.limited] if args.limits else [])
