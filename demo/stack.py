"""The demo's stack: the API and the workers (and a private Redis), started and stopped together.

What they run is handed in (Sample). sample.py runs the demo on one; the tests start theirs too:

    with Stack(env, log_dir, Sample("tasks.app", "api_server:app", load_app)) as stack:
        stack.start(workers=1)          # fresh state, the API and a worker, both ready
        ...                             # stack.app is this process's app
"""

import contextlib
import functools
import os
import sys
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import keyclaim
from demo import heartbeats, redis_server, settings
from demo.preflight import RunRefused, fresh_sqlite, refuse_if_in_use, refuse_unless_ours
from demo.processes import (
    Child,
    ChildDied,
    DeadlineExceeded,
    start_child,
    stop_children,
    wait_until,
)
from demo.provider import Provider, ProviderUnreachable
from demo.signals import raise_if_stopping

if TYPE_CHECKING:
    from pynenc import Pynenc

ROOT = Path(__file__).resolve().parent.parent
# A worker told to stop gets this much longer than its drain deadline before it is killed.
STOP_MARGIN_SECONDS = 3.0
# What ends a run with exit code 1 and one explanation (Stack.explain); the provider's errors
# are ConnectionErrors (demo/provider.py).
FAILURES = (ChildDied, DeadlineExceeded, ConnectionError, redis_server.NoRedis)


@dataclass(frozen=True)
class Sample:
    """What a stack runs, handed by its caller: the app the workers start with (pynenc's
    `--app NAME`), the provider's ASGI app (uvicorn's `NAME`), and this process's own copy of
    the workers' app, loaded once the environment holds the run's settings (load_app); fork:
    whether the workers may fork from this process once it has loaded it (Stack.start)."""

    workers: str
    api: str
    load_app: Callable[[], "Pynenc"]
    fork: bool = False


class Stack(contextlib.AbstractContextManager):
    """The API and the workers of one run. Leaving the `with` block stops every child.

    env: the settings the children are built from (demo/flags.py), on top of this process's.
    private_redis: with DEMO_BACKEND=redis, start a redis-server at env's REDIS_URL.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        log_dir: Path,
        sample: Sample,
        *,
        ready_timeout: float = 30.0,
        private_redis: bool = False,
        cwd: Path | None = None,
    ) -> None:
        self.env = dict(env)
        self.log_dir, self.ready_timeout, self.cwd = log_dir, ready_timeout, cwd
        self.private_redis, self.sample = private_redis, sample
        self.started: list[Child] = []  # every child ever started: all are stopped at the end
        self.api: Child | None = None
        self.workers: list[Child] = []  # the live ones
        self.crashes: list[str] = []
        self.boot_cpu = 0.0  # CPU seconds the command and its children took to be ready (launch)
        self._lives: Counter[int] = Counter()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def setting(self, name: str) -> str:
        return self.env.get(name) or settings.get(name)

    @functools.cached_property
    def app(self) -> "Pynenc":
        """This process's app, loaded on first use: it is built from the environment, so only
        once that holds the run's settings (sample.py)."""
        return self.sample.load_app()

    @functools.cached_property
    def provider(self) -> Provider:
        host, port = self.setting("DEMO_API_HOST"), self.setting("DEMO_API_PORT")
        return Provider(settings.api_url(host, port))

    def start(self, workers: int) -> None:
        """Fresh state, then the API and `workers` workers, booting side by side; back once the
        API answers with this run's token and every worker has sent its first heartbeat."""
        if self.setting("DEMO_BACKEND") == "redis":
            if not redis_server.has_plugin():
                raise redis_server.NoRedis(redis_server.PLUGIN_HINT)
            url = self.setting("REDIS_URL")
            if self.private_redis:
                log, at = self.log_dir / "redis.log", urlsplit(url).port
                child, _ = redis_server.start_private(log, self.ready_timeout, port=at)
                self.started.append(child)
            # The claim's own check (it imports pynenc: tasks.py, imported by now, already did).
            claim = self.setting("DEMO_ATOMIC_CLAIM") == "1"
            if claim and (why := keyclaim.inspect.redis_problem(url)):
                raise RunRefused(f"--atomic-claim: {why}", 2)
            # A Redis named by REDIS_URL may hold an earlier run's invocations: purge them
            # first, unless another session's workers use it now.
            if not self.private_redis:
                runners = heartbeats.in_app(self.app)
                refuse_if_in_use("the Redis at REDIS_URL", runners, "without REDIS_URL")
            self.app.purge()
        else:
            db = self.setting("DEMO_DB")
            refuse_unless_ours(db)  # before SQLite opens it to look for live workers
            refuse_if_in_use(db, heartbeats.in_sqlite(db), "--db other.db")
            fresh_sqlite(db)
        host, port = self.setting("DEMO_API_HOST"), self.setting("DEMO_API_PORT")
        argv = [sys.executable, "-m", "uvicorn", self.sample.api, "--host", host, "--port", port]
        # Warnings only: the log then holds just the provider's call lines.
        argv += ["--no-access-log", "--log-level", "warning"]
        self.api = self._start("API", argv, self.log_dir / "api.log", self.cwd)
        # The workers boot while this process imports tasks.py (its first enqueue needs it), or,
        # on SQLite and an app it loads now from its settings, fork from it once it has: one
        # import for both. Nothing loads pynenc or httpx before the children start (speed.md).
        sqlite, module = self.setting("DEMO_BACKEND") == "sqlite", self.sample.workers.split(".")[0]
        fork = self.sample.fork and sqlite and sys.platform == "linux" and module not in sys.modules
        fork = fork and self.env.items() <= os.environ.items()
        fresh = [] if fork else [self.spawn_worker() for _ in range(workers)]
        _ = self.app
        fresh += [self.spawn_worker(fork=True) for _ in range(workers if fork else 0)]
        self.wait_ready(fresh)

    def check(self, where: str = "") -> None:
        """Called on every poll: the API must live; a worker that dies is reported at once, and
        its crash, with `where` the run was, goes into the report (replaced: tools/stress.py).
        With none left, the run stops."""
        raise_if_stopping()
        if self.api is not None:
            self.api.check_alive()
        for worker in [w for w in self.workers if w.proc.poll() is not None]:
            self.workers.remove(worker)
            try:
                worker.check_alive()
            except ChildDied as exc:
                print(f"\n{exc}", flush=True)
            error = worker.last_error() or f"exit code {worker.proc.returncode}"
            self.crashes.append(f"{worker.name} died during {where or 'the run'}: {error}")
            self.replace(worker)
        if not self.workers:
            raise ChildDied("no worker is left to run the work")

    def replace(self, dead: Child) -> None:
        """What becomes of a dead worker: nothing here; the rounds start another."""

    def explain(self, exc: Exception) -> str:
        """A request that failed because a child died is best explained by the death."""
        if isinstance(exc, ConnectionError):
            for child in self.started:
                try:
                    child.check_alive()
                except ChildDied as died:
                    return str(died)
        return str(exc)

    def api_log(self) -> str:
        assert self.api is not None, "the API was never started"
        return "\n".join(self.api.lines())

    def stop(self, children: list[Child] | None = None) -> None:
        """Stop these children (by default every one started); a stop signal waits meanwhile."""
        stopping = list(self.started if children is None else children)
        try:
            stop_children(stopping)
        except KeyboardInterrupt:  # the first stop signal, a moment before signals were held
            stop_children(stopping)
        self.workers = [worker for worker in self.workers if worker not in stopping]

    def _start(self, name: str, argv: list[str], log: Path, cwd: Path | None) -> Child:
        child = start_child(name, argv, log, env=self.env, cwd=cwd)
        self.started.append(child)
        return child

    def spawn_worker(
        self, number: int | None = None, env: Mapping[str, str] | None = None, fork: bool = False
    ) -> Child:
        """Worker `number` (the next new one by default); a restart keeps the earlier log."""
        number = number or max(self._lives, default=0) + 1
        self._lives[number] += 1
        life = self._lives[number]
        argv = [sys.executable, "-m", "pynenc", "--app", self.sample.workers, "runner", "start"]
        again = "" if life == 1 else f".{life}"
        log = self.log_dir / f"worker-{number}{again}.log"
        cwd = self.worker_cwd(number)
        env = {**self.env, **(env or {})}
        # A stopping worker may drain its calls (keyclaim.drain): wait for that before killing.
        drain = float(env.get("DEMO_CALL_TIMEOUT") or settings.get("DEMO_CALL_TIMEOUT"))
        grace = drain + settings.DRAIN_MARGIN_SECONDS + STOP_MARGIN_SECONDS
        run: list[str] | Callable[[], None] = argv
        if fork:  # what argv runs, in a copy of this process, which has loaded tasks.py already
            from demo.runners import forked

            run = functools.partial(forked, argv[3:])
        child = start_child(f"worker {number}", run, log, env=env, cwd=cwd, grace=grace)
        self.started.append(child)
        self.workers.append(child)
        return child

    def worker_cwd(self, number: int) -> Path | None:
        """Where worker `number` starts (tools/stress.py --hosts: a copy of the project)."""
        return self.cwd

    def workers_up(self, fresh: list[Child]) -> bool:
        """Whether each fresh worker's runner has written its first heartbeat, under the pid
        it stored as it started (demo/runners.py): another runner's beat, on a store this
        process shares with others (a test's), is not one of ours coming up."""
        return {child.proc.pid for child in fresh} <= {r.pid for r in heartbeats.in_app(self.app)}

    def wait_ready(self, fresh: list[Child]) -> None:
        """Until the API answers with this run's token and each fresh worker has a heartbeat."""
        token = self.env.get("DEMO_API_INSTANCE", "")

        def api_is_ours() -> bool:
            try:
                return self.provider.health().get("instance") == token
            except ProviderUnreachable:
                return False

        def all_alive() -> None:
            for child in ([self.api] if self.api else []) + fresh:
                child.check_alive()

        api = f"the API at {self.provider.base_url}"
        wait_until(api_is_ours, self.ready_timeout, api, check=all_alive)
        workers = f"{len(fresh)} worker(s) to register as active runners"
        wait_until(lambda: self.workers_up(fresh), self.ready_timeout, workers, check=all_alive)
