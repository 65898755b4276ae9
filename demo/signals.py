"""Stop signals: the first SIGTERM or Ctrl-C stops a run by its `finally` blocks, once.

Teardowns hold further signals, so that what stops the children runs to its end.
"""

import contextlib
import signal
from collections.abc import Iterator

# The stop signals caught by stop_on_signals, in order, kept until its context ends.
_stopping: list[int] = []
# How many held_signals() blocks are open: while any is, a stop signal raises nothing.
_holding: list[None] = []


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn the first SIGTERM or Ctrl-C into KeyboardInterrupt, so `finally` blocks run.

    Only the first one raises. A terminal's Ctrl-C reaches a process under `uv run` twice (from
    the terminal, and forwarded by uv), and people press it again while the demo stops: those
    are remembered and raise nothing, so the teardown they land in runs to its end.
    stop_signal() tells which came first.

    A handler's exception can also be lost: Python ignores one raised inside a fork hook
    (logging registers one, and every child we start forks) or a finalizer. So the signal is
    remembered, and raise_if_stopping() raises it again at the next poll.
    """

    def handler(signum: int, frame: object) -> None:
        first = not _stopping
        _stopping.append(signum)
        if first and not _holding:
            raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        _stopping.clear()


@contextlib.contextmanager
def held_signals() -> Iterator[None]:
    """Inside, a stop signal is remembered but raises nothing: what runs here runs to its end."""
    _holding.append(None)
    try:
        yield
    finally:
        _holding.pop()


def stop_signal() -> int | None:
    return _stopping[0] if _stopping else None


def raise_if_stopping() -> None:
    """Raise KeyboardInterrupt if a stop signal came, even if its first raise was lost."""
    if _stopping and not _holding:
        raise KeyboardInterrupt(f"signal {_stopping[0]}")
