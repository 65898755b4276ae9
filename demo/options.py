"""The flags enqueue.py and sample.py share, and the one place sample.py's flags become the
environment its children (and its own copy of the app) are built from.
"""

import argparse
import secrets

from demo import redis_server, settings


def add_shape_arguments(parser: argparse.ArgumentParser) -> None:
    """The knobs enqueue.py and sample.py share; the defaults reproduce the article."""
    parser.add_argument("--accounts", type=int, default=len(settings.ACCOUNTS), metavar="N")
    parser.add_argument("--ops", type=int, default=len(settings.OPS), metavar="M")
    parser.add_argument("--hold", type=float, default=settings.HOLD_SECONDS, metavar="S")
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


def refuse_bad_shape(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage and exit 2 for a shape out of range."""
    if not 1 <= args.accounts <= 500 or not 1 <= args.ops <= 100:
        parser.error("--accounts must be 1..500 and --ops 1..100")
    if not 0 <= args.hold <= 30:
        parser.error("--hold must be between 0 and 30 seconds")


def api_url(args: argparse.Namespace) -> str:
    return f"http://{args.host}:{args.port}"


def environment(args: argparse.Namespace) -> dict[str, str]:
    """What sample.py's API, workers and own app are built from: its flags, as the variables
    api_server.py and tasks.py read (demo/settings.py), and two values this run alone knows.

    The one place settings reach the children. sample.py also puts them in its own
    environment before it imports tasks.py, so all of them build the same app.
    """
    env = {
        "DEMO_API_HOST": args.host,
        "DEMO_API_PORT": str(args.port),
        "DEMO_BACKEND": args.backend,
        "DEMO_DB": args.db,
        "DEMO_ATOMIC_CLAIM": "1" if args.atomic_claim else "0",
        "DEMO_DEAD_AFTER": str(args.dead_after),
        "DEMO_RUNNER": args.runner,
        "DEMO_HOSTS": "1" if args.hosts else "0",
        # Readiness checks that the API answering is this run's, never a stale one.
        "DEMO_API_INSTANCE": secrets.token_hex(8),
    }
    if args.backend == "redis":
        # REDIS_URL if set; else a private redis-server's, on a loopback port chosen now.
        env["REDIS_URL"] = settings.get("REDIS_URL") or redis_server.private_url()
    return env
