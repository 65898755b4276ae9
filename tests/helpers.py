"""What the tests share besides fixtures: sample.py as a user types it, processes, the state.

Running sample.py and reading its summaries back, looking at processes, and the provider and
pynenc's state seen from a test.
"""

import contextlib
import os
import re
import socket
import sqlite3
import subprocess
import threading
import uuid
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import psutil
from pynenc.invocation.status import InvocationStatus as S

import tasks
from demo.processes import free_port, wait_until
from demo.provider import Provider
from demo.stack import ROOT
from tools import injections

WAIT = 30.0
SUMMARY = re.compile(
    r"  (?P<enqueued>\d+) enqueued -> (?P<calls>\d+) calls"
    r"(?: \((?P<dropped>\d+) dropped\))?(?: \((?P<deduped>\d+) deduped\))?"
    r", (?P<collisions>\d+) collisions, [\d.]+s \(floor [\d.]+s, \d+%\)"
)


def unique(prefix: str = "acct") -> str:
    """An account name no other test uses, so tests never see each other's calls."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class FinishedRun:
    """One default `uv run python sample.py`, done: what it printed and what it left behind."""

    stdout: str
    stderr: str
    returncode: int
    folder: Path  # its database (demo.db) and logs
    monitor_port: int  # where its links point
    leftovers: list[str]  # processes still mentioning its folder once it had exited


# --- sample.py as a user runs it -----------------------------------------------------------


def run_sample(
    tmp_path: Path,
    *args: str,
    uv_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    timeout: float = 240,
) -> subprocess.CompletedProcess:
    """`uv run [uv_args] python sample.py ...` on a free port, a private db and log folder."""
    argv = ["uv", "run", *uv_args, "python", "sample.py", "--port", str(free_port())]
    argv += ["--db", str(tmp_path / "demo.db"), *args]
    return subprocess.run(
        argv,
        cwd=ROOT,
        env={**user_env(tmp_path), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def user_env(tmp_path: Path) -> dict[str, str]:
    """A user's environment, with logs in tmp_path, no colour and no Redis of the test's."""
    env = {**os.environ, "DEMO_LOG_DIR": str(tmp_path / "logs"), "NO_COLOR": "1"}
    env.pop("REDIS_URL", None)
    # Under `uv run --with ...` the tests run in an environment of uv's own: a user's `uv run`
    # would not see it (and uv says so on stderr, a line the tests would count).
    if env.get("VIRTUAL_ENV") != str(ROOT / ".venv"):
        env.pop("VIRTUAL_ENV", None)
    return env


def summaries(stdout: str) -> dict[str, dict[str, int]]:
    """The first summary line of each scenario, by letter."""
    found: dict[str, dict[str, int]] = {}
    letter = None
    for line in stdout.splitlines():
        if m := re.match(r"=== ([A-Z])\. ", line):
            letter = m.group(1)
        elif (m := SUMMARY.fullmatch(line)) and letter and letter not in found:
            found[letter] = {k: int(v or 0) for k, v in m.groupdict().items()}
            letter = None
    return found


# --- processes ---------------------------------------------------------------------------


def process_state(pid: int) -> str | None:
    """The kernel's one-letter state of pid ("Z": a zombie), or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def children_of(pid: int) -> list[int]:
    try:
        return [child.pid for child in psutil.Process(pid).children()]
    except psutil.NoSuchProcess:
        return []


def cmdline(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return ""


def processes_mentioning(marker: str) -> list[str]:
    """Live processes whose command line or environment holds marker: leaks, if any."""
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            words = [*proc.cmdline(), *proc.environ().values()]
        except psutil.Error:
            continue
        if any(marker in word for word in words):
            found.append(f"{proc.pid} {' '.join(proc.cmdline())}")
    return found


# --- the provider and pynenc's state, from a test -----------------------------------------


def paused(provider: Provider) -> AbstractContextManager[None]:
    """Inside, the provider's calls stay in flight; they end once the block is left."""
    return injections.paused(provider)


def account(provider: Provider, name: str) -> dict[str, int]:
    """The account's counts under one call in flight: calls, collisions, in flight, fenced,
    replayed, 409s. No test that reads them sets a rate, so none of its calls may have been
    throttled."""
    found = provider.report()["accounts"].get(name, {"throttled": 0})
    assert found.pop("throttled") == 0, f"{name}: throttled without a rate"
    found.pop("peak_in_flight", None)
    return found or counts()


def counts(**changed: int) -> dict[str, int]:
    """An account's counts as account() reads them: every one 0 but those given."""
    names = ("calls", "collisions", "in_flight", "fenced", "replayed", "conflicts")
    return dict.fromkeys(names, 0) | changed


def calls_for(provider: Provider, name: str) -> list[dict]:
    return [c for c in provider.timeline() if c["account_id"] == name]


def wait_in_flight(provider: Provider, name: str, count: int = 1) -> None:
    """Until the provider holds count calls for the account (RUNNING comes a moment earlier)."""
    wait_until(
        lambda: account(provider, name)["in_flight"] == count,
        WAIT,
        f"{count} call(s) in flight for {name}",
    )


def status_of(invocation_id: str) -> S:
    return tasks.app.orchestrator.get_invocation_status(invocation_id)


def wait_final(*invocation_ids: str) -> list[S]:
    return [
        wait_until(lambda i=i: (s := status_of(i)).is_final() and s, WAIT, f"{i} to finish")
        for i in invocation_ids
    ]


def history(invocation_id: str) -> list[S]:
    return [h.status_record.status for h in tasks.app.state_backend.get_history(invocation_id)]


def settled_history(invocation_id: str) -> list[S]:
    """The history once it holds the final status: pynenc writes the entry just after the
    status itself, so a test that saw the status may be a moment ahead of it."""
    return wait_until(
        lambda: (h := history(invocation_id)) and any(s.is_final() for s in h) and h,
        WAIT,
        f"{invocation_id}'s history to end",
    )


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


# --- the network between a worker and the provider ---------------------------------------


class HeldLink:
    """A TCP link to the provider that holds what its clients send until released: a network
    that delays a worker's call, so the call reaches the provider after one sent later. Point
    a worker at it with DEMO_API_PORT=str(link.port); `held` is set once a request waits in it.
    Its port is the system's choice, so it never collides with another session's."""

    def __init__(self, provider_port: int, host: str = "127.0.0.1") -> None:
        self.upstream = (host, provider_port)
        self.listener = socket.create_server((host, 0))
        self.port: int = self.listener.getsockname()[1]
        self.held, self.released = threading.Event(), threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() that waits on it
        self.listener.close()

    def release(self) -> None:
        """What is held goes on to the provider, and what comes next passes at once."""
        self.released.set()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # the listener closed: the link is done
            while True:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(self.upstream)
                for source, sink, hold in ((client, upstream, True), (upstream, client, False)):
                    threading.Thread(
                        target=self._pump, args=(source, sink, hold), daemon=True
                    ).start()

    def _pump(self, source: socket.socket, sink: socket.socket, hold: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if hold and not self.released.is_set():
                    self.held.set()
                    self.released.wait()
                sink.sendall(data)
        with contextlib.suppress(OSError):  # the other side sees the end: it closes too
            sink.shutdown(socket.SHUT_WR)
        source.close()
