"""The one clock every liveness decision reads, and the first fencing token it gives a key.

Redis: the store's own (TIME, read in the backend module); SQLite, whose workers share one
host: that host's clock since boot. Never a worker's wall clock: skewed, it would take a live
holder for dead. Written against pynenc 0.3.1 and 0.4.0, whose heartbeats and recovery read
each runner's own wall clock. The upstream change that retires it: pynenc's orchestrators stamp
heartbeats and claims with the store's clock and judge liveness on it.
"""

import os
import time
from pathlib import Path

EVER = 10 * 365 * 86400.0  # seconds: a window that takes in every runner pynenc knows
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
UPTIME = Path("/proc/uptime")


def _boot() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:  # pragma: no cover - not Linux: the monotonic clock, shared by the host
        return "monotonic"


BOOT = _boot()


def host_clock() -> float:
    """Seconds since this host booted, the same for every process on the host whatever its
    wall clock says (faketime shifts even a process's monotonic clocks, not this file). A beat
    is read with the boot it was taken in: one from an earlier boot is no beat at all."""
    try:  # the file's own calls: 12 us a read, where Path.read_text took 36 us
        uptime = os.open(UPTIME, os.O_RDONLY)
    except OSError:  # pragma: no cover - not Linux
        return time.monotonic()
    try:
        return float(os.read(uptime, 64).split()[0])
    finally:
        os.close(uptime)


def first_token(now: float) -> int:
    """A key's first fencing token: the time in microseconds. Tokens then grow by one per claim,
    so a store that lost its data (a Redis restarted without persistence, a new database) still
    issues tokens newer than any it issued before, and the provider never fences them."""
    return int(now * 1_000_000)
