"""A store that blinks: which errors say "not now" rather than "no", and how they are waited out.

A Redis paused, restarting or loading (redis-py's ConnectionError and TimeoutError, of which
BusyLoadingError is one), a SQLite database locked or busy past its timeout: the store did not
answer, which says nothing about the call. Written against pynenc 0.3.1 and 0.4.0, which store
such an error, raised while an outcome is stored, as the call's own (FAILED), and stop the
runner on one in its loop. The upstream change that retires it: outcome writes retried on a
transient store error, and `BaseRunner.run` waiting one out (the repo's docs/upstream.md).
"""

import sqlite3
import sys
import time
from collections.abc import Callable
from typing import Any

FIRST, LONGEST = 0.1, 1.0  # seconds: the first pause after a failed try, and the longest


class StoreDown(Exception):
    """The store did not answer within the deadline: what was to be written was not."""


def is_transient(exc: BaseException) -> bool:
    """Whether exc is the store not answering (now), rather than an answer."""
    if isinstance(exc, sqlite3.OperationalError):
        return "locked" in str(exc) or "busy" in str(exc)
    errors = sys.modules.get("redis.exceptions")  # only raised where redis-py is imported
    if errors is None or isinstance(exc, errors.AuthenticationError | errors.AuthorizationError):
        return False
    return isinstance(exc, errors.ConnectionError | errors.TimeoutError)


class Outage:
    """One line as the store stops answering, one as it answers again; pauses that grow."""

    def __init__(self, logger: Any, what: str) -> None:
        self.logger, self.what = logger, what
        self.since: float | None = None
        self.failures, self.pause = 0, FIRST

    def failed(self, exc: BaseException) -> float:
        """The pause to take before the next try (also kept in `pause`)."""
        if self.since is None:
            self.since = time.monotonic()
            self.logger.warning(
                f"{self.what}: store unreachable: {type(exc).__name__}: {exc}; retrying "
                f"every {LONGEST:g}s"
            )
        self.failures += 1
        self.pause = min(LONGEST, FIRST * 2 ** (self.failures - 1))
        return self.pause

    def answered(self) -> None:
        if self.since is not None:
            self.logger.warning(
                f"{self.what}: store answers again, after {time.monotonic() - self.since:.1f}s"
            )
            self.since, self.failures = None, 0


def retried[T](attempt: Callable[[], T], deadline: float, logger: Any, what: str) -> T:
    """attempt(), tried again after each transient store error until it answers; StoreDown
    once deadline seconds have passed since the first failure."""
    outage = Outage(logger, what)
    ends = None
    while True:
        try:
            value = attempt()
        except Exception as exc:
            if not is_transient(exc):
                raise
            ends = ends or time.monotonic() + deadline
            if (left := ends - time.monotonic()) <= 0:
                raise StoreDown(f"{what}: store unreachable for {deadline:g}s: {exc}") from exc
            time.sleep(min(left, outage.failed(exc)))
            continue
        outage.answered()
        return value
