"""The command lines: the flags enqueue.py, sample.py and the tools share.

Here, and nowhere else, sample.py's flags become the settings its children are built from. Each
flag takes its default from its knob (demo/settings.py) and is checked by the knob's own
rule as it is parsed: a bad value is refused in one usage line and exit 2.
"""

import argparse
import secrets
from collections.abc import Callable

from demo import redis_server, scenarios, settings
from demo.scenarios import Shape


def flag_type[T](rule: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse type from a rule that raises ValueError: its message becomes the usage
    error's one line, `argument --port: '８７６５': expected a port number from 1 to 65535`."""

    def parse(raw: str) -> T:
        try:
            return rule(raw)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{raw!r}: {exc}") from None

    return parse


def within[T: (int, float)](rule: Callable[[str], T], low: T, high: T) -> Callable[[str], T]:
    """A flag's rule (whole_number, number) with its range: what fits, said when it does not."""

    def parse(raw: str) -> T:
        if not low <= (value := rule(raw)) <= high:  # NaN fails both
            raise ValueError(f"expected {low:g} to {high:g}")
        return value

    return flag_type(parse)


def add_option(
    parser: argparse.ArgumentParser, option: str, name: str, help: str, **extra: object
) -> None:
    """The flag that sets knob `name`: its default from the environment, the very same rule."""
    parse = flag_type(settings.KNOBS[name].parse)
    default = settings.get(name)
    parser.add_argument(option, type=parse, default=default, help=f"{help} (env {name})", **extra)


def add_shape_arguments(parser: argparse.ArgumentParser) -> None:
    """The knobs enqueue.py and sample.py share; the defaults reproduce the article."""
    whole = settings.whole_number
    hold, backlog = within(settings.number, 0, 30), within(whole, 1, scenarios.MAX_BACKLOG)
    for flag, kind, default, metavar, what in (
        ("--accounts", within(whole, 1, 500), len(scenarios.ACCOUNTS), "N", "accounts"),
        ("--ops", within(whole, 1, 100), len(scenarios.OPS), "M", "ops per account"),
        ("--hold", hold, scenarios.HOLD_SECONDS, "S", "seconds the provider holds a call"),
        ("--backlog", backlog, scenarios.BACKLOG, "N", "E's busy account: its calls"),
    ):
        help = f"{what} (default %(default)s)"
        parser.add_argument(flag, type=kind, default=default, metavar=metavar, help=help)
    deadline = "deadline per scenario for every invocation to finish"
    add_option(parser, "--timeout", "DEMO_TIMEOUT", deadline, metavar="S")
    add_option(parser, "--host", "DEMO_API_HOST", "the API's host")
    add_option(parser, "--port", "DEMO_API_PORT", "the API's port")
    parser.add_argument("--no-chart", action="store_true", help="skip the lane charts")
    monitor = "where `pynenc monitor` answers, for the links"
    add_option(parser, "--monitor-url", "DEMO_MONITOR_URL", monitor)
    no_links = "print no links into the monitor's timeline"
    parser.add_argument("--no-links", action="store_true", help=no_links)


def enqueue_parser(choices: list[str], description: str) -> argparse.ArgumentParser:
    """enqueue.py's: the scenario, the shape; --atomic-claim is refused (the claim is read from
    the environment, which the workers share)."""
    parser = argparse.ArgumentParser(prog="enqueue.py", description=description)
    parser.add_argument("scenario", choices=choices)
    add_shape_arguments(parser)
    refused = "refused: the claim is read from DEMO_ATOMIC_CLAIM=1, set in every terminal"
    parser.add_argument("--atomic-claim", action="store_true", help=refused)
    return parser


class StackParser(argparse.ArgumentParser):
    """sample.py's flags (the tools take them too): the shape, the stack, the claim, the
    runner, and which scenarios beyond the article's four."""

    def __init__(self, prog: str, description: str) -> None:
        super().__init__(prog=prog, description=description)
        add_shape_arguments(self)
        workers = within(settings.whole_number, 1, 16)
        self.add_argument("--workers", type=workers, default=1, help="runner processes to start")
        add_option(self, "--db", "DEMO_DB", "SQLite file")
        state = (
            "where pynenc keeps its state: sqlite or redis; redis uses REDIS_URL if set, "
            "else starts a private redis-server"
        )
        add_option(self, "--backend", "DEMO_BACKEND", state)
        claim = (
            "check the key and claim in one atomic step, so one call per account holds across "
            "workers and under faults (env DEMO_ATOMIC_CLAIM=1; keyclaim/README.md)"
        )
        on = settings.get("DEMO_ATOMIC_CLAIM") == "1"
        self.add_argument("--atomic-claim", action="store_true", default=on, help=claim)
        dead = "with --atomic-claim: seconds without a heartbeat before a runner's claims are "
        dead += "recovered"
        add_option(self, "--dead-after", "DEMO_DEAD_AFTER", dead, metavar="S")
        longest = (
            "the task's HTTP timeout: the longest a call stays in flight, and about how long a "
            "stopping thread or wake worker drains its calls; --dead-after must be longer"
        )
        add_option(self, "--call-timeout", "DEMO_CALL_TIMEOUT", longest, metavar="S")
        runner = (
            "which runner each worker is (env DEMO_RUNNER): the article's ThreadRunner, wake "
            f"(it starts the next call when one ends), MultiThreadRunner ({settings.PROCESSES} "
            "processes) or ProcessRunner"
        )
        default = settings.get("DEMO_RUNNER")
        self.add_argument("--runner", choices=settings.RUNNER_NAMES, default=default, help=runner)
        noisy = "also run E: one busy account beside quiet ones"
        self.add_argument("--noisy", action="store_true", help=noisy)
        limits = (
            "also run F (up to N calls in flight per account) and G (at most R calls a "
            "second per account): with --atomic-claim, which enforces them"
        )
        self.add_argument("--limits", action="store_true", help=limits)
        ready = "deadline for the API and the workers to come up"
        add_option(self, "--ready-timeout", "DEMO_READY_TIMEOUT", ready, metavar="S")

    def parse_args(self, *args, **kwargs) -> argparse.Namespace:  # type: ignore[override]
        parsed = super().parse_args(*args, **kwargs)
        if parsed.limits and not parsed.atomic_claim:
            self.error("--limits needs --atomic-claim: N per account and a rate are the claim's")
        return parsed


def shape(args: argparse.Namespace, workers: int = 1, threads: int = scenarios.THREADS) -> Shape:
    """The size of a run, from the shape flags; workers and threads for its floor."""
    return Shape(
        args.accounts, args.ops, args.hold, backlog=args.backlog, workers=workers, threads=threads
    )


def environment(args: argparse.Namespace) -> dict[str, str]:
    """What sample.py's API, workers and own app are built from (the module's one place): its
    flags, as the variables api_server.py and tasks.py read, and two values this run alone knows."""
    env = {
        "DEMO_API_HOST": args.host,
        "DEMO_API_PORT": str(args.port),
        "DEMO_BACKEND": args.backend,
        "DEMO_DB": args.db,
        "DEMO_ATOMIC_CLAIM": "1" if args.atomic_claim else "0",
        "DEMO_DEAD_AFTER": str(args.dead_after),
        "DEMO_CALL_TIMEOUT": str(args.call_timeout),
        "DEMO_RUNNER": args.runner,
        # Readiness checks that the API answering is this run's, never a stale one.
        "DEMO_API_INSTANCE": secrets.token_hex(8),
    }
    if args.backend == "redis":
        # REDIS_URL if set; else a private redis-server's, on a loopback port chosen now.
        env["REDIS_URL"] = settings.get("REDIS_URL") or redis_server.private_url()
    return env


def setup_line(args: argparse.Namespace, runner: str, where: str = "") -> str | None:
    """One line on what runs the scenarios (`where`: tools/stress.py's hosts), unless it is the
    article's one ThreadRunner."""
    if not (args.workers > 1 or args.atomic_claim or where or runner != "thread"):
        return None
    claim = f"on, dead after {args.dead_after:g}s" if args.atomic_claim else "off"
    kind = "" if runner == "thread" else f" ({runner} runner)"
    return f"--- {args.backend}, {args.workers} worker(s){kind}{where}; atomic claim {claim}"
