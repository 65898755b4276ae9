"""Starting, watching and stopping the demo's child processes, and waiting with deadlines.

sample.py and the tests share these, so every child is started and stopped one way.
"""

import contextlib
import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

PR_SET_PDEATHSIG = 1


class DeadlineExceeded(Exception):
    """A wait ran out of time; the message says what it was waiting for."""


class ChildDied(Exception):
    """A child process exited while we still needed it."""


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]
    # Once stopped, the PID may belong to someone else: never signal it again.
    stopped: bool = False

    def tail(self, lines: int = 20) -> str:
        self.log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(f"    {line}" for line in text[-lines:])

    def last_error(self) -> str:
        """The last line of the log that names an exception, if any."""
        self.log.flush()
        lines = self.log_path.read_text(errors="replace").splitlines()
        found = (
            line.strip() for line in reversed(lines) if re.search(r"\w(Error|Exception)\b", line)
        )
        return next(found, "")

    def check_alive(self) -> None:
        if (code := self.proc.poll()) is not None:
            raise ChildDied(
                f"{self.name} (pid {self.proc.pid}) exited with code {code}. "
                f"Last lines of {self.log_path}:\n{self.tail()}"
            )


def _die_with_parent() -> None:
    """Runs in the child: Linux sends it SIGTERM if the parent dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start_child(
    name: str,
    argv: Sequence[str],
    log_path: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Child:
    """Start argv in its own process group, its output in log_path."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("wb")
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
            # Own group: a Ctrl-C in the terminal reaches us only, and we stop the group.
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    except BaseException:
        log.close()
        raise
    child = Child(name, proc, log_path, log)
    try:
        # A signal that came during the fork was swallowed by a fork hook: honour it now.
        raise_if_stopping()
    except KeyboardInterrupt:
        stop_children([child])
        raise
    return child


def stop_children(stopping: Sequence[Child], grace: float = 5.0) -> None:
    """SIGTERM every child's group at once, SIGKILL what is left after grace, close the logs."""
    stopping = [child for child in stopping if not child.stopped]
    try:
        for child in stopping:
            if child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for child in stopping:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            # The leader may be gone while something it started lives on in the group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(timeout=grace)
    finally:
        for child in stopping:
            child.stopped = True
            child.log.close()


@contextlib.contextmanager
def children() -> Iterator[list[Child]]:
    """A list to put started children in; all of them are stopped on the way out."""
    started: list[Child] = []
    try:
        yield started
    finally:
        stop_children(started)


def wait_until[T](
    probe: Callable[[], T | None],
    timeout: float,
    what: str,
    interval: float = 0.02,
    check: Callable[[], None] | None = None,
) -> T:
    """Poll probe until it returns something truthy; raise DeadlineExceeded after timeout.

    check runs on every poll and may raise (e.g. ChildDied) to stop waiting at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        raise_if_stopping()
        if check is not None:
            check()
        if result := probe():
            return result
        if time.monotonic() >= deadline:
            raise DeadlineExceeded(f"gave up after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def peak_memory_mib(pid: int) -> float:
    """The process's peak resident memory so far (Linux VmHWM), or 0 where unknown."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


# The stop signal caught by stop_on_signals, kept until its context ends.
_stopping: list[int] = []


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGTERM and Ctrl-C into KeyboardInterrupt so `finally` blocks run.

    A handler's exception can be lost: Python ignores one raised inside a fork hook (logging
    registers one, and every child we start forks) or a finalizer. So the signal is also
    remembered, and raise_if_stopping() raises it again at the next poll.
    """

    def handler(signum: int, frame: object) -> None:
        _stopping.append(signum)
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        _stopping.clear()


def raise_if_stopping() -> None:
    """Raise KeyboardInterrupt if a stop signal came, even if its first raise was lost."""
    if _stopping:
        raise KeyboardInterrupt(f"signal {_stopping[0]}")
