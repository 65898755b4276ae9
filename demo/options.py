"""The flags enqueue.py and sample.py share, and where sample.py's flags become settings.

sample.py's flags become the environment its children (and its own copy of the app) are
built from, here and nowhere else.
"""

import argparse
import secrets

from demo import redis_server, settings
from demo.scenarios import Shape


def add_shape_arguments(parser: argparse.ArgumentParser) -> None:
    """The knobs enqueue.py and sample.py share; the defaults reproduce the article."""
    whole, within = settings.whole_number, settings.within
    hold, backlog = within(settings.number, 0, 30), within(whole, 1, settings.MAX_BACKLOG)
    for flag, kind, default, metavar, what in (
        ("--accounts", within(whole, 1, 500), len(settings.ACCOUNTS), "N", "accounts"),
        ("--ops", within(whole, 1, 100), len(settings.OPS), "M", "ops per account"),
        ("--hold", hold, settings.HOLD_SECONDS, "S", "seconds the provider holds a call"),
        ("--backlog", backlog, settings.BACKLOG, "N", "E's busy account: its calls"),
    ):
        help = f"{what} (default %(default)s)"
        parser.add_argument(flag, type=kind, default=default, metavar=metavar, help=help)
    settings.add_option(
        parser,
        "--timeout",
        "DEMO_TIMEOUT",
        "deadline per scenario for every invocation to finish",
        metavar="S",
    )
    settings.add_option(parser, "--host", "DEMO_API_HOST", "the API's host")
    settings.add_option(parser, "--port", "DEMO_API_PORT", "the API's port")
    parser.add_argument("--no-chart", action="store_true", help="skip the lane charts")
    settings.add_option(
        parser, "--monitor-url", "DEMO_MONITOR_URL", "where `pynenc monitor` answers, for the links"
    )
    parser.add_argument(
        "--no-links", action="store_true", help="print no links into the monitor's timeline"
    )


def add_claim_arguments(parser: argparse.ArgumentParser) -> None:
    """The atomic claim's flags (keyclaim): on or off, and its two windows."""
    parser.add_argument(
        "--atomic-claim",
        action="store_true",
        default=settings.get("DEMO_ATOMIC_CLAIM") == "1",
        help="check the key and claim in one atomic step, so one call per account holds across "
        "workers and under faults (env DEMO_ATOMIC_CLAIM=1; keyclaim/README.md)",
    )
    settings.add_option(
        parser,
        "--dead-after",
        "DEMO_DEAD_AFTER",
        "with --atomic-claim: seconds without a heartbeat before a runner's claims are recovered",
        metavar="S",
    )
    settings.add_option(
        parser,
        "--call-timeout",
        "DEMO_CALL_TIMEOUT",
        "the task's HTTP timeout: the longest a call stays in flight, and about how long a "
        "stopping thread or wake worker drains its calls; --dead-after must be longer",
        metavar="S",
    )


def shape(args: argparse.Namespace, workers: int = 1, threads: int = settings.MAX_THREADS) -> Shape:
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
