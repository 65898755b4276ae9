"""The long runs that tests/test_scale.py reads, started in the background as the session begins.

The benchmark (tools/bench.py), sample.py on Redis, and the rounds on several workers
(tools/stress.py).

They start as the session begins, when a selected test reads them (conftest.py's `long_runs`),
and run two at a time beside the other tests, which mostly wait on the provider: by the time
test_scale.py is reached they are done. They only count calls and collisions, never time, so
they hold each call 0.1 s instead of the article's 0.4 s.

The Redis runs use `uv run --isolated --group redis`, an environment of their own, so the
project's default environment stays as a user has it (without the plugin).
"""

import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from demo import redis_server
from demo.processes import Child, die_with_parent, free_port, stop_children
from demo.stack import ROOT
from helpers import user_env

WITH_REDIS = ("--isolated", "--group", "redis")
# Ready-timeout: several runs boot at once on a small machine.
SHORT = ("--hold", "0.1", "--no-chart", "--ready-timeout", "120")
STRESS = "tools.stress"  # the rounds, several workers, separate hosts
# Each run's flags, and its Redis, if any ("url": a redis-server of its own, named by
# REDIS_URL; "private": the one sample.py starts itself). The longest first.
RUNS: dict[str, tuple[tuple[str, ...], str | None]] = {
    # The smallest bench that prints every figure: one round at a short hold, a scaled run of
    # 6 accounts, two rounds of D, one start-up timed, and B at 4 accounts on 4 workers.
    "bench": (
        ("-m", "tools.bench", "--rounds", "1", "--hold", "0.1", "--bench-accounts", "6")
        + ("--bench-backlogs", "20", "--bench-d-rounds", "2", "--bench-starts", "1")
        + ("--bench-many", "4"),
        None,
    ),
    # On the wake runner, so the same run shows that runner keeps its promises on Redis.
    "redis, one worker": (("--backend", "redis", "--runner", "wake", *SHORT), "url"),
    "three workers": (
        ("-m", STRESS, "--workers", "3", "--rounds", "2", "--timeout", "5", *SHORT),
        None,
    ),
    # On the wake runner: the same run shows that runner keeps every promise with the claim.
    "three workers, claim": (
        ("-m", STRESS, "--atomic-claim", "--workers", "3", "--rounds", "2", "--runner", "wake")
        + SHORT,
        None,
    ),
    # On the Redis sample.py starts by itself, with no REDIS_URL.
    "redis, claim, hosts": (
        ("-m", STRESS, "--backend", "redis", "--atomic-claim", "--workers", "3", "--hosts", *SHORT),
        "private",
    ),
}
AT_ONCE = 2  # two CPUs here, and the tests beside them need some
DEADLINE = 400.0  # for each run
STOP_GRACE = 15.0  # sample.py stops its own children on SIGTERM


@dataclass(frozen=True)
class LongRun:
    result: subprocess.CompletedProcess
    folder: Path  # its logs, and its database when on SQLite
    redis_url: str = ""  # the Redis named by REDIS_URL, if any


class LongRuns:
    """RUNS in the background, AT_ONCE at a time; `results()` waits for them, `stop()` ends
    whatever still runs (the session's end, or Ctrl-C) and their Redis servers.

    Should pytest end without stop() (a second Ctrl-C cuts its teardown short), nothing
    waits on them: their threads are daemons, and each run is told to stop (SIGTERM, which
    uv passes on to sample.py) as this process dies.
    """

    def __init__(self, folder_for: Callable[[str], Path]) -> None:
        self.slots = threading.Semaphore(AT_ONCE)
        self.jobs: dict[str, Future[LongRun]] = {}
        self.procs: list[subprocess.Popen] = []
        self.servers: list[Child] = []
        self.stopping = False
        self.lock = threading.Lock()  # a run starts before stop() begins, or never
        redis_here = shutil.which("redis-server") is not None
        for name, (args, redis) in RUNS.items():
            if redis and not redis_here:
                continue  # test_scale.py skips, or fails in CI
            folder = folder_for(name.replace(", ", "-").replace(" ", "-"))
            # The environment as the session began: tests change theirs while these run.
            env = user_env(folder)
            job = self.jobs[name] = Future()
            if redis == "url":
                # Started here: it outlives its run's thread, for the test that reads it after.
                try:
                    child, url = redis_server.start_private(folder / "redis" / "redis.log", 30)
                except Exception as exc:
                    job.set_exception(exc)
                    continue
                self.servers.append(child)
                env = {**env, "REDIS_URL": url}
            threading.Thread(
                target=self._job, args=(job, folder, args, redis, env), daemon=True
            ).start()

    def _job(self, job: Future[LongRun], *run: object) -> None:
        with self.slots:
            if not job.set_running_or_notify_cancel():
                return  # cancelled by stop() before its turn
            try:
                job.set_result(self._run(*run))  # type: ignore[arg-type]
            except BaseException as exc:
                job.set_exception(exc)

    def _run(self, folder: Path, args: tuple[str, ...], redis: str | None, env: dict) -> LongRun:
        url = env.get("REDIS_URL", "") if redis == "url" else ""
        # sample.py, or a tool: ("-m", "tools.bench", ...) runs python -m tools.bench
        program, args = (args[:2], args[2:]) if args[0] == "-m" else (("sample.py",), args)
        argv = ["uv", "run", *(WITH_REDIS if redis else ()), "python", *program]
        argv += ["--port", str(free_port()), "--db", str(folder / "demo.db"), *args]
        out, err = folder / "stdout.txt", folder / "stderr.txt"
        with out.open("w") as stdout, err.open("w") as stderr:
            with self.lock:
                if self.stopping:
                    raise RuntimeError("the session is ending")
                proc = subprocess.Popen(
                    argv,
                    cwd=ROOT,
                    env=env,
                    stdout=stdout,
                    stderr=stderr,
                    start_new_session=True,
                    preexec_fn=die_with_parent if sys.platform == "linux" else None,
                )
                self.procs.append(proc)
            try:
                proc.wait(DEADLINE)
            except subprocess.TimeoutExpired:
                self._end(proc)
                raise
        result = subprocess.CompletedProcess(
            argv, proc.returncode, out.read_text(), err.read_text()
        )
        return LongRun(result, folder, url)

    def results(self) -> dict[str, LongRun]:
        return {name: job.result(DEADLINE * len(RUNS)) for name, job in self.jobs.items()}

    @staticmethod
    def _end(proc: subprocess.Popen) -> None:
        """SIGTERM to sample.py's own process group: it stops its children; then SIGKILL."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if proc.poll() is not None:
                return
            try:
                os.killpg(proc.pid, sig)
                proc.wait(STOP_GRACE)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
        for job in self.jobs.values():
            job.cancel()  # those not started yet
        for proc in self.procs:
            self._end(proc)
        stop_children(self.servers)
