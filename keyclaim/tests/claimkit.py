"""What the claim's tests share: a test's own app, its workers, and pynenc's state seen from it."""

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import claimapp
from provider import Judge
from pynenc import Pynenc
from pynenc.invocation.status import InvocationStatus as S

WAIT = 30.0
HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(port: int, folder: Path) -> subprocess.Popen:
    """A real redis-server on a loopback port, saving nothing, answering PING once returned."""
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--dir", str(folder)]
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, start_new_session=True)

    def answers() -> bool:
        assert server.poll() is None, f"redis-server exited: {server.returncode}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    wait_until(answers, WAIT, "redis-server to answer")
    return server


def stop_redis(server: subprocess.Popen, sig: signal.Signals = signal.SIGTERM) -> None:
    server.send_signal(sig)
    try:
        server.wait(WAIT)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(WAIT)


def unique(prefix: str = "acct") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_until[T](condition: Callable[[], T], deadline: float, what: str) -> T:
    """condition()'s first truthy value, polled until deadline seconds have passed."""
    ends = time.monotonic() + deadline
    while not (value := condition()):
        if time.monotonic() > ends:
            raise AssertionError(f"gave up waiting for {what} after {deadline:g}s")
        time.sleep(0.02)
    return value


@dataclass
class Claim:
    """A test's own app (its own app id and database), its tasks, and its provider."""

    app: Pynenc
    tasks: SimpleNamespace
    provider: Judge
    db: str = ""
    redis_url: str = ""

    def status(self, invocation_id: str) -> S:
        return self.app.orchestrator.get_invocation_status(invocation_id)

    def history(self, invocation_id: str) -> list[S]:
        found = self.app.state_backend.get_history(invocation_id)
        return [h.status_record.status for h in found]

    def settled_history(self, invocation_id: str) -> list[S]:
        """The history once it holds the final status (pynenc writes it a moment after)."""
        return wait_until(
            lambda: (h := self.history(invocation_id)) and any(s.is_final() for s in h) and h,
            WAIT,
            f"{invocation_id}'s history to end",
        )

    def final(self, *invocation_ids: str, deadline: float = 2 * WAIT) -> list[S]:
        return [
            wait_until(lambda i=i: (s := self.status(i)).is_final() and s, deadline, f"{i} to end")
            for i in invocation_ids
        ]

    def runner_of(self, invocation_id: str) -> str:
        return self.app.orchestrator.get_invocation_status_record(invocation_id).runner_id

    def environment(self, **windows: str) -> dict[str, str]:
        return claimapp.environment(
            self.app.app_id, self.provider.url, self.db, self.redis_url, **windows
        )


def new_claim(tmp_path: Path, provider: Judge, redis_url: str = "", **build: Any) -> Claim:
    app_id = f"keyclaim_{uuid.uuid4().hex[:10]}"
    db = "" if redis_url else str(tmp_path / f"{app_id}.db")
    app = claimapp.build(app_id, db, redis_url, **build)
    return Claim(app, claimapp.bound(app, provider.url), provider, db, redis_url)


@contextmanager
def orchestrated_by(app: Pynenc, orchestrator: Any) -> Iterator[None]:
    """Calls made in the block are registered (and statuses written) by this orchestrator."""
    kept, app._orchestrator = app._orchestrator, orchestrator
    try:
        yield
    finally:
        app._orchestrator = kept


def write_lock_held(db_path: str) -> bool:
    """Whether another connection holds the database's write lock right now."""
    probe = sqlite3.connect(db_path, timeout=0)
    try:
        probe.execute("BEGIN IMMEDIATE")
        probe.rollback()
        return False
    except sqlite3.OperationalError as exc:
        if "locked" not in str(exc):
            raise
        return True
    finally:
        probe.close()


class Pausing:
    """Stops a claimer at its first `stops` pause points, one after the other.

    At each, `reached[n]` is set, and it waits there until `go[n]` is set.
    """

    def __init__(self, stops: int = 1) -> None:
        self.reached = [threading.Event() for _ in range(stops)]
        self.go = [threading.Event() for _ in range(stops)]
        self.passed = 0

    @property
    def checked(self) -> threading.Event:
        return self.reached[0]

    def pause(self) -> None:
        if self.passed == len(self.go):
            return
        n, self.passed = self.passed, self.passed + 1
        self.reached[n].set()
        assert self.go[n].wait(WAIT), "the test never let the paused claimer go on"

    def let_go(self) -> None:
        for go in self.go:
            go.set()


@dataclass
class Worker:
    """A real pynenc worker process running claimapp.app, in a process group of its own."""

    proc: subprocess.Popen
    log_path: Path
    runner_id: str = ""
    log: Any = field(default=None, repr=False)

    def logged(self, text: str) -> bool:
        self.log.flush()
        return text in self.log_path.read_text(errors="replace")

    def signal(self, sig: signal.Signals) -> None:
        os.killpg(self.proc.pid, sig)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL past the deadline; a stopped one is continued first."""
        if self.proc.poll() is None:
            for sig in (signal.SIGCONT, signal.SIGTERM):
                self.signal(sig)
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(WAIT)
        self.log.close()


class Workers:
    """Starts workers for a claim; each one is back once its first heartbeat is in the store,
    and every one is stopped by stop_all() on every way out of the test."""

    def __init__(self, claim: Claim, folder: Path) -> None:
        self.claim, self.folder, self.started = claim, folder, []

    def start(self, **windows: str) -> Worker:
        known = self._beating()
        log_path = self.folder / f"worker-{len(self.started) + 1}.log"
        log = log_path.open("w")
        argv = [sys.executable, "-m", "pynenc", "--app", "claimapp.app", "runner", "start"]
        env = {**os.environ, **self.claim.environment(**windows), "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(
            argv, cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        worker = Worker(proc, log_path, log=log)
        self.started.append(worker)

        def new_runner() -> str | None:
            assert proc.poll() is None, f"the worker exited: {log_path.read_text()}"
            fresh = self._beating() - known
            return next(iter(fresh)) if fresh else None

        worker.runner_id = wait_until(new_runner, WAIT, "the worker's first heartbeat")
        return worker

    def _beating(self) -> set[str]:
        orchestrator = self.claim.app.orchestrator
        return {r.runner_id for r in orchestrator.get_active_runners()}

    def holding(self, invocation_id: str) -> Worker:
        """The worker whose runner holds the invocation now."""
        runner = self.claim.runner_of(invocation_id)
        (found,) = [w for w in self.started if w.runner_id == runner]
        return found

    def stop_all(self) -> None:
        for worker in self.started:
            worker.stop()


def redis_checks(app_id: str, redis_url: str, checks: Any) -> dict[str, Any]:
    """Each in-process check on a Redis app of its own (scripts run by redis_script): a fresh
    store for each, and claimers as a worker's orchestrator, with a beating runner of its own."""
    from pynenc.runner.runner_context import RunnerContext

    from keyclaim.redis_claim import AtomicClaimRedisOrchestrator

    redis_app = claimapp.build(app_id, redis_url=redis_url)
    bound = claimapp.bound(redis_app, "http://127.0.0.1:9")  # nothing here runs a call

    def claimer() -> tuple[Any, Any]:
        orchestrator = AtomicClaimRedisOrchestrator(redis_app)
        ctx = RunnerContext(runner_cls="ThreadRunner")
        orchestrator.register_runner_heartbeats([ctx.runner_id])
        return orchestrator, ctx

    found = {}
    for check in checks:
        redis_app.purge()
        found[check.__name__] = check(redis_app, bound, claimer)
    return found
