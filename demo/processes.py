"""Starting, watching and stopping the demo's child processes, and waiting with deadlines.

sample.py and the tests share these, so every child is started and stopped one way. A stop
signal (demo/signals.py) never leaves a child behind.
"""

import atexit
import contextlib
import ctypes
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, NoReturn

from demo.signals import held_signals, raise_if_stopping

PR_SET_PDEATHSIG = 1


class DeadlineExceeded(Exception):
    """A wait ran out of time; the message says what it was waiting for."""


# A program that refuses its settings says so in one line and exits: "program.py: why" and 2,
# or, for the app pynenc's command line could not build (tasks.py raised a ValueError as it was
# imported), pynenc's own "ERROR: Failed to load application: why" and 1.
REFUSED_EXITS = (1, 2)
REFUSAL = re.compile(r"(?:[\w.]+\.py|ERROR: Failed to load application): (?P<why>\S.*)")


class ChildDied(Exception):
    """A child process exited while we still needed it. refusal: why, in its own one line, when
    it exited refusing its settings (what the parent would say, had it noticed first)."""

    def __init__(self, message: str, refusal: str = "") -> None:
        super().__init__(message)
        self.refusal = refusal


class Forked:
    """A child forked to run a function on what this process has imported already, started as
    start_child starts a program (its own session, stdin empty, its output on the log) and ended
    with the function, never back in the caller's code; a handle as a Popen is to Child. Only
    while this process has one thread: a fork copies no other."""

    def __init__(self, run: Callable[[], object], log: IO[bytes]) -> None:
        assert threading.active_count() == 1, "a fork copies no thread but the caller's"
        sys.stdout.flush(), sys.stderr.flush()  # or the child would print them again
        led, leading = os.pipe()
        if (pid := os.fork()) == 0:
            self._run(run, log, (led, leading))
        # Back once the child leads its own session, where stop_children reaches it.
        os.close(leading), os.read(led, 1), os.close(led)
        self.pid, self.returncode = pid, None

    @staticmethod
    def _run(run: Callable[[], object], log: IO[bytes], pipe: tuple[int, int]) -> NoReturn:
        code = 1
        try:  # the stop signals as a new Python has them, its output on the log, line by line
            os.setsid(), die_with_parent(), *map(os.close, pipe)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            os.dup2(log.fileno(), 1), os.dup2(log.fileno(), 2)
            sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
            run()
            code = 0
        except SystemExit as exc:  # as Python ends on one: its code, or its message and 1
            code = exc.code or 0 if isinstance(exc.code, int | None) else print(exc.code) or 1
        except BaseException:
            traceback.print_exc()
        finally:  # the exit handlers of a Python that had imported the same, and nothing more
            atexit._run_exitfuncs()
            os._exit(code)

    def poll(self) -> int | None:
        if self.returncode is None and (ended := os.waitpid(self.pid, os.WNOHANG))[0]:
            self.returncode = os.waitstatus_to_exitcode(ended[1])
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        """Polled to its end, as Popen.wait polls with a timeout."""
        ended = lambda: self.poll() is not None  # noqa: E731
        try:
            wait_until(ended, math.inf if timeout is None else timeout, "it", interval=0.005)
        except DeadlineExceeded:
            raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0.0) from None
        return self.returncode


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes] | Forked
    log_path: Path
    log: IO[bytes]
    # How long it may take to stop once told to (a worker drains its calls first).
    grace: float = 5.0
    # Once stopped, the PID may belong to someone else: never signal it again.
    stopped: bool = False

    def lines(self) -> list[str]:
        """Its log so far (read from the file: once stopped, the handle is closed)."""
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace").strip().splitlines()

    def tail(self, lines: int = 20) -> str:
        return "\n".join(f"    {line}" for line in self.lines()[-lines:])

    def last_error(self) -> str:
        errors = [line for line in self.lines() if re.search(r"\w(Error|Exception)\b", line)]
        return errors[-1].strip() if errors else ""

    def check_alive(self) -> None:
        if (code := self.proc.poll()) is not None:
            raise ChildDied(
                f"{self.name} (pid {self.proc.pid}) exited with code {code}. "
                f"Last lines of {self.log_path}:\n{self.tail()}",
                self.refusal() if code in REFUSED_EXITS else "",
            )

    def refusal(self) -> str:
        """Why it refused its settings, if its log ends with the one line that says so."""
        lines = self.lines()
        found = REFUSAL.fullmatch(lines[-1]) if lines else None
        return found["why"] if found else ""


def die_with_parent() -> None:
    """Runs in the child: Linux sends it SIGTERM if the parent dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start_child(
    name: str,
    argv: Sequence[str] | Callable[[], object],
    log_path: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    grace: float = 5.0,
) -> Child:
    """Start argv in its own process group, its output in log_path; once told to stop, it is
    given `grace` seconds before it is killed. A function for argv: forked (Forked), on this
    process's environment and folder."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("wb")
    try:
        # Held: a stop signal during the fork must not leave a child we hold no handle on.
        with held_signals():
            proc = (
                Forked(argv, log)
                if callable(argv)
                else subprocess.Popen(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=cwd,
                    env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
                    # Own group: a Ctrl-C in the terminal reaches us only, and we stop the group.
                    start_new_session=True,
                    preexec_fn=die_with_parent if sys.platform == "linux" else None,
                )
            )
    except BaseException:
        log.close()
        raise
    child = Child(name, proc, log_path, log, grace)
    try:
        raise_if_stopping()  # one that came during the fork
    except KeyboardInterrupt:
        stop_children([child])
        raise
    return child


def stop_children(stopping: Sequence[Child]) -> None:
    """SIGTERM every child's group at once, SIGKILL what is left after its grace, close the
    logs. Stop signals are held meanwhile: another Ctrl-C does not cut a teardown short."""
    with held_signals():
        stopping = [child for child in stopping if not child.stopped]
        try:
            for child in stopping:
                if child.proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(child.proc.pid, signal.SIGTERM)
            told = time.monotonic()
            for child in stopping:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.proc.wait(timeout=max(0.0, told + child.grace - time.monotonic()))
                # The leader may be gone while something it started lives on in the group.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.proc.wait(timeout=child.grace)
        finally:
            for child in stopping:
                child.stopped = True
                child.log.close()


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
