"""The whole demo in one command: start the API and a worker, run all four scenarios, stop both.

Run it: uv run python sample.py        (--help for rounds, workers, Redis and the benchmark)
"""

import argparse
import importlib.util
import os
import secrets
import shutil
import sys
import time
from pathlib import Path

import httpx

from demo import pynenc_versions, redis_server, settings
from demo.processes import (
    Child,
    ChildDied,
    DeadlineExceeded,
    children,
    peak_memory_mib,
    port_in_use,
    raise_if_stopping,
    start_child,
    stop_children,
    stop_on_signals,
    wait_until,
)
from enqueue import add_shape_arguments, check_shape_arguments, monitor_link, whole_run_link

BENCH_ROUNDS = 5
BENCH_SCALED = {"accounts": 30, "ops": 4, "hold": 0.1}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shape_arguments(parser)
    parser.add_argument("--rounds", type=int, default=None, help="repeat the scenarios N times")
    parser.add_argument("--workers", type=int, default=1, help="runner processes to start")
    settings.add_option(parser, "--db", "DEMO_DB", "SQLite file")
    settings.add_option(
        parser,
        "--backend",
        "DEMO_BACKEND",
        "where pynenc keeps its state: sqlite or redis; redis uses REDIS_URL if set, "
        "else starts a private redis-server",
    )
    parser.add_argument(
        "--atomic-claim",
        action="store_true",
        default=settings.get("DEMO_ATOMIC_CLAIM") == "1",
        help="check the key and claim in one atomic step, so one call per account holds across "
        "workers (env DEMO_ATOMIC_CLAIM=1; demo/atomic_claim.py)",
    )
    settings.add_option(
        parser,
        "--dead-after",
        "DEMO_DEAD_AFTER",
        "with --atomic-claim: seconds without a heartbeat before a runner's claims are recovered",
        metavar="S",
    )
    parser.add_argument(
        "--runner",
        choices=settings.RUNNER_NAMES,
        default=settings.get("DEMO_RUNNER"),
        help="which runner each worker is (env DEMO_RUNNER): the article's ThreadRunner, wake "
        f"(it starts the next call when one ends), MultiThreadRunner ({settings.PROCESSES} "
        "processes) or ProcessRunner",
    )
    parser.add_argument(
        "--hosts",
        action="store_true",
        help="with --backend redis: start each worker from its own copy of the project, "
        "sharing only REDIS_URL and the API's address, as on separate machines",
    )
    parser.add_argument(
        "--bench",
        action="store_true",
        help=f"benchmark: {BENCH_ROUNDS} rounds (or --rounds), then a scaled run; print figures",
    )
    parser.add_argument(
        "--bench-accounts",
        type=int,
        default=BENCH_SCALED["accounts"],
        metavar="N",
        help=f"accounts in --bench's scaled run (default {BENCH_SCALED['accounts']})",
    )
    settings.add_option(
        parser,
        "--ready-timeout",
        "DEMO_READY_TIMEOUT",
        "deadline for the API and the workers to come up",
        metavar="S",
    )
    args = parser.parse_args(argv)
    check_shape_arguments(parser, args)
    if args.rounds is None:
        args.rounds = BENCH_ROUNDS if args.bench else 1
    if not 1 <= args.rounds <= 1000 or not 1 <= args.workers <= 16:
        parser.error("--rounds must be 1..1000 and --workers 1..16")
    if not 1 <= args.bench_accounts <= 500:
        parser.error("--bench-accounts must be 1..500")
    if args.bench and args.runner != "thread":
        parser.error("--bench runs both the thread and the wake runner by itself: drop --runner")
    if args.hosts and args.backend != "redis":
        parser.error("--hosts needs --backend redis: separate machines share no SQLite file")
    return args


def check_claim(backend: str) -> str | None:
    """Why --atomic-claim cannot run here, in one line; None when it can."""
    if backend == "redis" and importlib.util.find_spec("pynenc_redis") is None:
        return None  # redis_server.provide says how to get the plugin
    try:
        pynenc_versions.check("atomic claim", backend)
    except pynenc_versions.UntestedVersion as exc:
        return str(exc)
    return None


def refuses_the_claim(redis_url: str) -> str | None:
    from demo import atomic_claim  # imports pynenc and its Redis plugin: only when asked

    return atomic_claim.check_redis(redis_url)


def log_dir() -> Path:
    return Path(settings.get("DEMO_LOG_DIR"))


def fresh_sqlite(path: str) -> None:
    """Each run starts from an empty database: no invocation of an earlier run can leak in."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(path + suffix).unlink(missing_ok=True)


def forget_earlier_runs() -> None:
    """A Redis named by REDIS_URL may hold an earlier run's invocations: purge them first."""
    from demo import scenarios  # tasks.py builds the app from the environment set by now

    scenarios.purge_backend()


def start_api() -> Child:
    host, port = settings.get("DEMO_API_HOST"), settings.get("DEMO_API_PORT")
    # A token only this run knows: readiness checks it, so a stale server never passes.
    os.environ["DEMO_API_INSTANCE"] = secrets.token_hex(8)
    argv = [sys.executable, "-m", "uvicorn", "api_server:app", "--host", host, "--port", port]
    # Warnings only: the log then holds just the provider's call lines.
    argv += ["--no-access-log", "--log-level", "warning"]
    return start_child("API", argv, log_dir() / "api.log")


def runner_ids() -> frozenset[str]:
    from demo import scenarios

    return frozenset(r.runner_id for r in scenarios.tasks.app.orchestrator.get_active_runners())


def start_worker(number: int, life: int = 1) -> Child:
    """Worker `number`; `life` counts its restarts, so a crashed worker's log is kept."""
    argv = [sys.executable, "-m", "pynenc", "--app", "tasks.app", "runner", "start"]
    name = f"worker-{number}.log" if life == 1 else f"worker-{number}.{life}.log"
    host = separate_host(number) if settings.get("DEMO_HOSTS") == "1" else None
    return start_child(f"worker {number}", argv, log_dir() / name, cwd=host)


def separate_host(number: int) -> Path:
    """A copy of the project for worker `number`, as if it ran on a machine of its own."""
    here = Path(__file__).resolve().parent
    host = (log_dir() / "hosts" / f"host-{number}").resolve()
    shutil.rmtree(host, ignore_errors=True)
    host.mkdir(parents=True)
    shutil.copy2(here / "tasks.py", host / "tasks.py")
    shutil.copytree(here / "demo", host / "demo", ignore=shutil.ignore_patterns("__pycache__"))
    return host


def wait_ready(
    api: Child, workers: list[Child], timeout: float, earlier: frozenset[str] = frozenset()
) -> None:
    """Until the API answers with this run's token and every worker has a heartbeat.

    earlier: runner ids of workers stopped already, whose heartbeats do not count.
    """
    from demo import scenarios  # tasks.py builds the app from the environment set by now

    token = os.environ["DEMO_API_INSTANCE"]
    provider = scenarios.Provider()

    def api_is_ours() -> bool:
        try:
            return provider.health().get("instance") == token
        except scenarios.ProviderUnreachable:
            return False

    def all_alive() -> None:
        for child in (api, *workers):
            child.check_alive()

    wait_until(api_is_ours, timeout, f"the API at {settings.api_url()}", check=all_alive)
    # A runner counts as up once it has written its first heartbeat to the orchestrator.
    wait_until(
        lambda: len(runner_ids() - earlier) >= len(workers),
        timeout,
        f"{len(workers)} worker(s) to register as active runners",
        check=all_alive,
    )


class Watch:
    """Checked on every poll: the API must live; a worker that dies is reported at once.

    With one worker, nothing is left to run the work and the run stops. With several, a
    stress run measures N workers, so the dead one is replaced, as a supervisor would, and
    the crash goes into the report.
    """

    def __init__(self, api: Child, workers: list[Child], started: list[Child]) -> None:
        self.api, self.alive, self.started = api, list(workers), started
        self.restart = len(workers) > 1
        self.where = ""
        self.crashes: list[str] = []

    def __call__(self) -> None:
        raise_if_stopping()
        self.api.check_alive()
        for worker in [w for w in self.alive if w.proc.poll() is not None]:
            self.alive.remove(worker)
            try:
                worker.check_alive()
            except ChildDied as exc:
                print(f"\n{exc}", flush=True)
            error = worker.last_error() or f"exit code {worker.proc.returncode}"
            self.crashes.append(f"{worker.name} died during {self.where}: {error}")
            if self.restart:
                number = int(worker.name.split()[-1])
                lives = sum(1 for c in self.started if c.name == worker.name)
                self.alive.append(replacement := start_worker(number, lives + 1))
                self.started.append(replacement)
        if not self.alive:
            raise ChildDied("no worker is left to run the work")


def main(argv: list[str] | None = None) -> int:
    began = time.monotonic()
    settings.exit_on_bad_environment("sample.py")
    args = parse_args(argv)
    host, port = args.host, args.port
    if port_in_use(host, port):
        print(
            f"sample.py: port {port} on {host} is already in use, maybe by an API left running "
            f"in another terminal.\nStop that process, or choose another port: "
            f"uv run python sample.py --port {port + 1}   (or DEMO_API_PORT={port + 1})",
            file=sys.stderr,
        )
        return 1
    if args.backend == "sqlite" and (why := settings.db_problem(args.db)):
        print(f"sample.py: --db (DEMO_DB) {args.db!r}: {why}", file=sys.stderr)
        return 2
    if args.atomic_claim and (why := check_claim(args.backend)):
        print(f"sample.py: --atomic-claim: {why}", file=sys.stderr)
        return 2
    os.environ["DEMO_BACKEND"] = args.backend
    os.environ["DEMO_DB"] = args.db
    os.environ["DEMO_ATOMIC_CLAIM"] = "1" if args.atomic_claim else "0"
    os.environ["DEMO_DEAD_AFTER"] = str(args.dead_after)
    os.environ["DEMO_HOSTS"] = "1" if args.hosts else "0"
    os.environ["DEMO_RUNNER"] = args.runner
    # A private Redis stops with this run, and with it everything the monitor would show.
    args.private_redis = args.backend == "redis" and not settings.get("REDIS_URL")

    phases: dict[str, float] = {}
    with stop_on_signals(), children() as started:
        try:
            if args.backend == "redis":
                url = redis_server.provide(started, args.ready_timeout)
                if args.atomic_claim and (why := refuses_the_claim(url)):
                    print(f"sample.py: --atomic-claim: {why}", file=sys.stderr)
                    return 2
                forget_earlier_runs()
            else:
                fresh_sqlite(args.db)
            # Children first: they boot while wait_ready imports pynenc in this process.
            started.append(api := start_api())
            workers = [start_worker(n) for n in range(1, args.workers + 1)]
            started.extend(workers)
            wait_ready(api, workers, args.ready_timeout)
            phases["start-up"] = time.monotonic() - began
            watch = Watch(api, workers, started)
            if args.bench:
                code, watch = bench(args, watch)
            else:
                code, _ = run_scenarios(args, watch)
            phases["scenarios"] = time.monotonic() - began - phases["start-up"]
            memory = [peak_memory_mib(w.proc.pid) for w in watch.alive]
            stopping = time.monotonic()
            stop_children(started)
            phases["teardown"] = time.monotonic() - stopping
        except KeyboardInterrupt:
            print("\nsample.py: interrupted; stopping the API and the workers.", file=sys.stderr)
            return 130
        except (
            ChildDied,
            DeadlineExceeded,
            ConnectionError,
            httpx.HTTPError,
            redis_server.NoRedis,
        ) as exc:
            print(f"sample.py: {explain(exc, started)}", file=sys.stderr)
            return 1
    if args.bench:
        total = time.monotonic() - began
        shown = ", ".join(f"{name} {seconds:.2f}s" for name, seconds in phases.items())
        print(f"\nwhole run (in-process): {total:.2f}s = {shown}")
        print(f"worker peak memory: {', '.join(f'{m:.0f} MiB' for m in memory)}")
    return code


def explain(exc: Exception, started: list[Child]) -> str:
    """A request that failed because a child died is best explained by the death."""
    if isinstance(exc, ConnectionError | httpx.HTTPError):
        for child in started:
            try:
                child.check_alive()
            except ChildDied as died:
                return str(died)
    return str(exc)


BENCH_RUNNERS = ("thread", "wake")


def bench(args: argparse.Namespace, watch: Watch) -> tuple[int, Watch]:
    """The same rounds and scaled run on pynenc's ThreadRunner, then on the wake runner."""
    from demo import scenarios

    code, results = 0, {}
    for n, runner in enumerate(BENCH_RUNNERS):
        if n:  # fresh workers of the next kind, on the same API and state
            earlier = runner_ids()
            stop_children(watch.alive)
            os.environ["DEMO_RUNNER"] = args.runner = runner
            workers = [start_worker(i, life=n + 1) for i in range(1, args.workers + 1)]
            watch.started.extend(workers)
            wait_ready(watch.api, workers, args.ready_timeout, earlier)
            watch = Watch(watch.api, workers, watch.started)
        print(f"\n##### {runner} runner #####")
        runner_code, results[runner] = run_scenarios(args, watch)
        code = code or runner_code
    print(scenarios.compare(results))
    return code, watch


def run_scenarios(args: argparse.Namespace, watch: Watch) -> tuple[int, list]:
    from demo import lanes, progress, scenarios

    slots = settings.slots_per_worker()
    shape = scenarios.Shape(args.accounts, args.ops, args.hold, workers=args.workers, threads=slots)
    provider = scenarios.Provider()
    if args.workers > 1 or args.atomic_claim or args.hosts or args.runner != "thread":
        claim = f"on, dead after {args.dead_after:g}s" if args.atomic_claim else "off"
        where = ", each from its own copy of the project" if args.hosts else ""
        runner = "" if args.runner == "thread" else f" ({args.runner} runner)"
        print(f"--- {args.backend}, {args.workers} worker(s){runner}{where}; atomic claim {claim}")
    outcomes: list[scenarios.Outcome] = []
    for round_no in range(1, args.rounds + 1):
        for scenario in scenarios.SCENARIOS.values():
            watch.where = f"round {round_no}, {scenario.letter}. {scenario.key}"
            label = f"{scenario.letter}. {scenario.key}"
            if args.rounds > 1:
                label = f"round {round_no}/{args.rounds}, {label}"
            with progress.line(label, provider) as tick:
                outcome = scenarios.run(
                    scenario, shape, provider, args.timeout, check=watch, progress=tick
                )
            outcomes.append(outcome)
            if (round_no == 1 and not args.bench) or outcome.broken():
                print(outcome.summary(), flush=True)
                if not args.private_redis and (link := monitor_link(args, *outcome.window)):
                    print(link, flush=True)
                if not args.no_chart:
                    print(lanes.render(outcome.timeline), flush=True)
        if args.rounds > 1:
            line = f"round {round_no}/{args.rounds}: {scenarios.one_line(outcomes[-4:])}"
            print(line, flush=True)

    if args.rounds == 1 and not args.bench:
        print("\n--- the provider's call log ---")
        watch.api.log.flush()
        print(watch.api.log_path.read_text(errors="replace").strip())
    else:
        print(scenarios.distribution(outcomes))
        print(scenarios.efficiency(outcomes))
    if args.bench:
        size = BENCH_SCALED | {"accounts": args.bench_accounts}
        scaled = scenarios.Shape(**size, workers=args.workers, threads=slots)
        label = f"{scaled.accounts} accounts x {scaled.ops} ops, hold {scaled.hold}s"
        print(f"\n=== scaled run: {label} ===")
        watch.where = "the scaled run"
        big = []
        for s in scenarios.SCENARIOS.values():
            with progress.line(f"scaled {s.letter}. {s.key}", provider) as tick:
                big.append(scenarios.run(s, scaled, provider, args.timeout, watch, tick))
        print(scenarios.efficiency(big))
        outcomes += big
    code = verdict(outcomes, watch.crashes)
    if args.private_redis and not args.no_links:
        print("\n(no monitor links: the private Redis stopped; set REDIS_URL to keep the state)")
    elif link := whole_run_link(args, outcomes):
        print(f"\nSee it in pynenc's monitor; start it with: {monitor_command(args)}\n{link}")
    return code, outcomes


def monitor_command(args: argparse.Namespace) -> str:
    """How to open the monitor on this run's state, which stays where it was."""
    command = "uv run pynenc monitor"
    if args.backend == "redis":
        url = settings.get("REDIS_URL")
        command = (
            f"DEMO_BACKEND=redis REDIS_URL={url} uv run --isolated --group redis pynenc monitor"
        )
    elif args.db != settings.DEFAULTS["DEMO_DB"]:
        command = f"DEMO_DB={args.db} {command}"
    return command


def verdict(outcomes: list, crashes: list[str]) -> int:
    broken = [(o.scenario.letter, p) for o in outcomes for p in o.broken()]
    broken += [("worker", crash) for crash in crashes]
    if crashes:
        print(f"\nworker crashes: {len(crashes)}")
        for crash in crashes:
            print(f"  {crash}")
    if broken:
        letter, problem = broken[0]
        print(f"\nFAILED: {len(broken)} broken guarantee(s); first: {letter}: {problem}")
        return 1
    stamp = time.strftime("%H:%M:%S")
    print(f"\nOK: every guarantee held ({len(outcomes)} scenario runs, {stamp}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
