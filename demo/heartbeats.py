"""Who is using a state store right now, from pynenc's own runner heartbeats.

sample.py asks before it deletes a database or purges a shared Redis; enqueue.py before it
enqueues work that only a worker can run. pynenc never removes a stopped runner's heartbeat,
so a recent one counts when its process still runs here, or when it beat on another host.
"""

import os
import socket
import sqlite3
import time
from collections.abc import Callable, Iterable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import keyclaim
from demo import settings
from demo.signals import raise_if_stopping

if TYPE_CHECKING:
    from pynenc import Pynenc

# pynenc's runners beat every atomic_service_check_interval_minutes: 30 s by default.
ALIVE_WITHIN = 75.0
HEARTBEATS = "orchestrator_runner_heartbeats"
CONTEXTS = "state_backend_runner_contexts"


@dataclass(frozen=True)
class Runner:
    cls: str | None  # class, pid and host are None until the runner has stored its context
    pid: int | None
    host: str | None
    beat_ago: float

    def __str__(self) -> str:
        if self.pid is None:
            return f"a runner of unknown pid, last heartbeat {self.beat_ago:.0f}s ago"
        return f"{self.cls} pid {self.pid} on {self.host}, last heartbeat {self.beat_ago:.0f}s ago"


def alive(beats: Iterable[tuple[str | None, int | None, str | None, float]]) -> list[Runner]:
    """The runners among (class, pid, host, last beat) that are still there. The demo's
    workers store their context (pid, host) as they start (demo/runners.py); for a runner
    without one, the beat alone counts."""
    here, now, alive_here = socket.gethostname(), time.time(), keyclaim.inspect.alive_here
    found = []
    for cls, pid, host, beat in beats:
        if now - beat > ALIVE_WITHIN or (pid and host == here and not alive_here(pid)):
            continue
        found.append(Runner(cls, pid, host, now - beat))
    return found


def in_sqlite(path: str) -> list[Runner]:
    """The live runners whose heartbeats are in this SQLite file, read without writing to it."""
    if not Path(path).is_file():
        return []
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as conn:
            tables = {n for (n,) in conn.execute("SELECT name FROM sqlite_master")}
            beats: list[tuple[str | None, int | None, str | None, float]] = []
            for table in [t for t in tables if t.endswith(HEARTBEATS)]:
                contexts = table.removesuffix(HEARTBEATS) + CONTEXTS
                if contexts in tables:
                    query = (
                        f"SELECT c.runner_cls, c.pid, c.hostname, b.last_heartbeat FROM {table} b "
                        f"LEFT JOIN {contexts} c ON c.runner_id = b.runner_id"
                    )
                else:
                    query = f"SELECT NULL, NULL, NULL, last_heartbeat FROM {table}"
                beats += conn.execute(query).fetchall()
    except sqlite3.DatabaseError:  # not a database pynenc wrote: nobody of ours uses it
        return []
    return alive(beats)


class StateUnreachable(ConnectionError):
    """The state store did not answer (a Redis that is not there)."""


def in_app(app: "Pynenc") -> list[Runner]:
    """The live runners of the app's state store, whichever backend it is."""
    beats = []
    try:
        for info in keyclaim.inspect.beating(app, ALIVE_WITHIN):
            context = app.state_backend.get_runner_context(info.runner_id)
            where = (context.runner_cls, context.pid, context.hostname) if context else (None,) * 3
            beats.append((*where, info.last_heartbeat.timestamp()))
    except Exception as exc:  # redis.exceptions.ConnectionError is not the built-in one
        if "Connection" not in type(exc).__name__:
            raise
        raise StateUnreachable(
            f"pynenc's state store does not answer ({exc}): is the Redis at REDIS_URL running?"
        ) from exc
    return alive(beats)


def calling(runners: list[Runner]) -> int:
    """How many of them run calls: a MultiThreadRunner only supervises its ThreadRunner
    processes, which beat on their own."""
    return sum(1 for r in runners if r.cls not in ("MultiThreadRunner", "MultiThreadWorker"))


def described(runners: list[Runner]) -> str:
    """The one to name first: a known process, the latest beat."""
    first = min(runners, key=lambda r: (r.pid is None, r.beat_ago))
    more = f" and {len(runners) - 1} more" if len(runners) > 1 else ""
    return f"{first}{more}"


# How long enqueue.py waits for a worker that is still starting (importing, building its app).
STARTING_WITHIN = 20.0


def _state_of(env: dict[str, str], cwd: str) -> str:
    """The state store a demo process with this environment uses: its Redis, or its file."""
    if env.get("DEMO_BACKEND", settings.DEFAULTS["DEMO_BACKEND"]) == "redis":
        return env.get("REDIS_URL", settings.DEFAULTS["REDIS_URL"])
    return str(Path(cwd, env.get("DEMO_DB", settings.DEFAULTS["DEMO_DB"])).resolve())


def starting() -> list[int]:
    """The pids of `pynenc ... runner start` processes on this host, on this process's state,
    that have not beaten yet (the four-terminal way, typed quickly: a worker still importing).
    The worker itself, not the `uv run` that started it: a match whose child matches is left out.
    """
    import psutil  # here, not with the module: sample.py starts its children without it

    mine, found = _state_of(dict(os.environ), os.getcwd()), {}
    for proc in psutil.process_iter(["pid", "ppid", "cmdline"]):
        words = proc.info["cmdline"] or []  # none for a process we may not read
        pynenc = any("pynenc" in word for word in words)
        if proc.pid == os.getpid() or not {"runner", "start"} <= set(words) or not pynenc:
            continue
        try:
            if _state_of(proc.environ(), proc.cwd()) == mine:
                found[proc.pid] = proc.info["ppid"]
        except psutil.Error:  # gone, or another user's: not one of ours
            continue
    return [pid for pid in found if pid not in found.values()]


def _running(pid: int) -> bool:
    """Whether the process still runs: one that ended but is not reaped yet (a zombie) has not."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def awaited(
    app: "Pynenc", say: Callable[[str], None], refused: Callable[[], object]
) -> tuple[list[Runner], str]:
    """The live runners, and why there are none (for a worker seen starting: still starting, or
    gone). None yet but a worker starting: said in one line, then waited for, up to
    STARTING_WITHIN seconds, until that worker is gone, or until refused() (a fleet that
    refuses this process) says something."""
    if (runners := in_app(app)) or not (pids := starting()):
        return runners, ""
    say(f"a worker is starting (pid {pids[0]}): waiting up to {STARTING_WITHIN:g}s for it")
    deadline = time.monotonic() + STARTING_WITHIN
    while time.monotonic() < deadline and any(_running(pid) for pid in pids):
        raise_if_stopping()
        if (runners := in_app(app)) or refused():
            return runners, ""
        time.sleep(0.2)
    if runners := in_app(app):
        return runners, ""
    worker = f"the worker that was starting (pid {pids[0]})"
    if any(_running(pid) for pid in pids):
        return [], f"{worker} has not beaten after {STARTING_WITHIN:g}s"
    return [], f"{worker} exited: its terminal says why"


class NoWorkerLeft(Exception):
    """Every worker of the run's state stopped while it waited on them."""


def watching(app: "Pynenc", every: float = 2.0) -> Callable[[], None]:
    """A check for a scenario's wait (Stage.check): raises NoWorkerLeft once no live runner is
    left, looked at every `every` seconds, instead of waiting out the deadline for work nobody
    will run."""
    next_look = time.monotonic() + every

    def check() -> None:
        nonlocal next_look
        if time.monotonic() >= next_look:
            next_look = time.monotonic() + every
            if not in_app(app):
                raise NoWorkerLeft

    return check
