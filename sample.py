"""The whole demo in one command: start the API and a worker, run all four scenarios, stop both.

Run it: uv run python sample.py        (--help for rounds, workers, Redis and the benchmark)
"""

import argparse
import os
import secrets
import sys
import time
from pathlib import Path

import settings
from enqueue import add_shape_arguments, check_shape_arguments
from processes import (
    Child,
    ChildDied,
    DeadlineExceeded,
    children,
    port_in_use,
    start_child,
    stop_on_sigterm,
    wait_until,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shape_arguments(parser)
    parser.add_argument("--rounds", type=int, default=1, help="repeat the scenarios N times")
    parser.add_argument("--workers", type=int, default=1, help="runner processes to start")
    parser.add_argument("--db", default=settings.get("DEMO_DB"), help="SQLite file (env DEMO_DB)")
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=float(os.environ.get("DEMO_READY_TIMEOUT", "30")),
        metavar="S",
        help="deadline for the API and the workers to come up (env DEMO_READY_TIMEOUT)",
    )
    args = parser.parse_args(argv)
    check_shape_arguments(parser, args)
    if not 1 <= args.rounds <= 1000 or not 1 <= args.workers <= 16:
        parser.error("--rounds must be 1..1000 and --workers 1..16")
    return args


def log_dir() -> Path:
    return Path(settings.get("DEMO_LOG_DIR"))


def fresh_sqlite(path: str) -> None:
    """Each run starts from an empty database: no invocation of an earlier run can leak in."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(path + suffix).unlink(missing_ok=True)


def start_api(started: list[Child], timeout: float) -> Child:
    host, port = settings.get("DEMO_API_HOST"), int(settings.get("DEMO_API_PORT"))
    token = os.environ["DEMO_API_INSTANCE"] = secrets.token_hex(8)
    argv = [sys.executable, "-m", "uvicorn", "api_server:app", "--host", host, "--port", str(port)]
    # Warnings only: the log then holds just the provider's call lines.
    argv += ["--no-access-log", "--log-level", "warning"]
    api = start_child("API", argv, log_dir() / "api.log")
    started.append(api)

    import scenarios

    provider = scenarios.Provider()

    def answers_as_ours() -> bool:
        try:
            return provider.health().get("instance") == token
        except scenarios.ProviderUnreachable:
            return False

    wait_until(answers_as_ours, timeout, f"the API at {settings.api_url()}", check=api.check_alive)
    return api


def start_workers(started: list[Child], count: int, timeout: float) -> list[Child]:
    import tasks

    argv = [sys.executable, "-m", "pynenc", "--app", "tasks.app", "runner", "start"]
    workers = [
        start_child(f"worker {i}", argv, log_dir() / f"worker-{i}.log") for i in range(1, count + 1)
    ]
    started.extend(workers)

    def all_alive() -> None:
        for worker in workers:
            worker.check_alive()

    # A runner counts as up once it has written its first heartbeat to the orchestrator.
    wait_until(
        lambda: len(tasks.app.orchestrator.get_active_runners()) >= count,
        timeout,
        f"{count} worker(s) to register as active runners",
        check=all_alive,
    )
    return workers


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    host, port = settings.get("DEMO_API_HOST"), args.port
    if port_in_use(host, port):
        print(
            f"sample.py: port {port} on {host} is already in use, maybe by an API left running "
            f"in another terminal.\nStop that process, or choose another port: "
            f"uv run python sample.py --port {port + 1}   (or DEMO_API_PORT={port + 1})",
            file=sys.stderr,
        )
        return 1
    os.environ["DEMO_DB"] = args.db
    fresh_sqlite(args.db)
    # Imported only now: tasks.py builds the app from the environment set above.
    import scenarios

    with stop_on_sigterm(), children() as started:
        try:
            api = start_api(started, args.ready_timeout)
            workers = start_workers(started, args.workers, args.ready_timeout)
            return run_scenarios(args, api, [api, *workers])
        except KeyboardInterrupt:
            print("\nsample.py: interrupted; stopping the API and the workers.", file=sys.stderr)
            return 130
        except (ChildDied, DeadlineExceeded, scenarios.ProviderUnreachable) as exc:
            print(f"sample.py: {exc}", file=sys.stderr)
            return 1


def run_scenarios(args: argparse.Namespace, api: Child, watched: list[Child]) -> int:
    import lanes
    import scenarios

    def all_alive() -> None:
        for child in watched:
            child.check_alive()

    shape = scenarios.Shape(args.accounts, args.ops, args.hold, workers=args.workers)
    provider = scenarios.Provider()
    outcomes: list[scenarios.Outcome] = []
    for round_no in range(1, args.rounds + 1):
        for scenario in scenarios.SCENARIOS.values():
            outcome = scenarios.run(scenario, shape, provider, args.timeout, check=all_alive)
            outcomes.append(outcome)
            if round_no == 1 or outcome.broken():
                print(outcome.summary(), flush=True)
                if not args.no_chart:
                    print(lanes.render(outcome.timeline), flush=True)
        if round_no > 1:
            print(
                f"round {round_no}/{args.rounds}: {scenarios.one_line(outcomes[-4:])}", flush=True
            )

    if args.rounds == 1:
        print("\n--- the provider's call log ---")
        api.log.flush()
        print(api.log_path.read_text(errors="replace").strip())
    else:
        print(scenarios.distribution(outcomes))
    broken = [(o.scenario.letter, p) for o in outcomes for p in o.broken()]
    if broken:
        print(f"\nFAILED: {len(broken)} broken guarantee(s); first: {broken[0][0]}: {broken[0][1]}")
        return 1
    print(
        f"\nOK: every guarantee held ({len(outcomes)} scenario runs, {time.strftime('%H:%M:%S')})."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
