"""What refuses a run before anything starts, in one line and with its exit code.

A busy port, a database that cannot be made or is not this demo's to delete, a state a running
worker still uses, and a claim on untested versions or with windows that would lie.
"""

import argparse

import keyclaim
from demo import database, heartbeats, redis_server
from demo.processes import port_in_use


class RunRefused(Exception):
    """The demo cannot run with these settings here: what to say, and the exit code to end with."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def preflight(args: argparse.Namespace) -> None:
    """Raise RunRefused for sample.py's flags (args) before anything starts: a busy port exits
    1, each other refusal 2."""
    host, port, backend, db, claim = args.host, args.port, args.backend, args.db, args.atomic_claim
    if port_in_use(host, port):
        raise RunRefused(
            f"port {port} on {host} is already in use, maybe by an API left running "
            f"in another terminal.\nStop that process, or choose another port: "
            f"uv run python sample.py --port {port + 1}   (or DEMO_API_PORT={port + 1})",
            1,
        )
    if backend == "sqlite" and (why := database.problem(db)):
        raise RunRefused(f"--db (DEMO_DB) {db!r}: {why}", 2)
    if backend == "sqlite":
        refuse_unless_ours(db)
    if claim and not (backend == "redis" and not redis_server.has_plugin()):
        # (Without the plugin, Stack.start says how to get it.)
        try:
            keyclaim.inspect.check_versions("atomic claim", backend)
        except keyclaim.UntestedVersion as exc:
            raise RunRefused(f"--atomic-claim: {exc}", 2) from None
    # The claim's own check of its windows, with the beat keyclaim.install asks for.
    dead_after, longest = args.dead_after, args.call_timeout
    if claim and (why := keyclaim.inspect.windows_problem(dead_after, longest)):
        raise RunRefused(f"--atomic-claim: --dead-after and --call-timeout: {why}", 2)


def fresh_sqlite(path: str) -> None:
    """Delete the database before a run, only if it is this demo's (refuse_unless_ours)."""
    refuse_unless_ours(path)
    database.delete(path)


def refuse_unless_ours(path: str) -> None:
    """RunRefused (2), naming the file and why, unless a run may delete it (not_ours)."""
    if why := database.not_ours(path):
        raise RunRefused(
            f"--db (DEMO_DB) {path!r}: {why}; a run starts by deleting its database, so it takes "
            "only a new file, an empty one, or one an earlier run made",
            2,
        )


def refuse_if_in_use(store: str, runners: list[heartbeats.Runner], instead: str) -> None:
    """RunRefused (1) while a worker runs on the state a run would start by emptying (the
    four-terminal way's, another sample.py's). `instead`: the flag that gives it one of its own."""
    if runners:
        raise RunRefused(
            f"{store} is in use by a running worker ({heartbeats.described(runners)}): stop that "
            f"session's workers first, or give this run state of its own: "
            f"uv run python sample.py {instead}",
            1,
        )
