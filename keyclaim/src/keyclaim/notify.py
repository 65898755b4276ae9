"""The pushed wake: a call queued for a free key, by any process, wakes one worker as it happens.

Redis: a list. A producer pushes one entry per call it queued (RPUSH, the list trimmed to CAP);
each wake runner has a thread blocked on it (BLPOP). Redis hands an entry to exactly one waiter,
so one call wakes one worker, and an entry pushed while every worker is busy stays in the list
for the first to wait again. Pub/sub would wake every worker for each call (a herd), and lose a
message sent while none listens; a stream would add consumer groups and acknowledgements for
what is only a hint.

SQLite (its workers share a host): a UNIX datagram socket per worker, in a folder derived from
the database's path; a producer sends each call's datagram to the next socket in turn, skipping
(and removing) one whose worker is gone. One datagram wakes one worker, with no daemon between.

Either way a notification is a hint: a lost one (a Redis restarting, a worker gone between its
socket and its loop) costs at most the idle cadence, at which every worker still looks. Each
carries the seconds until its call may start (a merge window, keyclaim.limit: 0 for now).
Written against pynenc 0.3.1 and 0.4.0, whose runners only poll; retired with the wake runner.
"""

import hashlib
import os
import socket
import tempfile
from contextlib import suppress
from pathlib import Path
from typing import Any

from keyclaim import outage

CAP = 64  # Redis: entries kept while no worker waits (each wakes one look; more add nothing)
LISTEN = 1  # seconds a waiter blocks at most, then sees whether its runner still runs


class RedisWakes:
    """A list in the app's Redis: RPUSH to notify, BLPOP to wait."""

    def __init__(self, client: Any, key: str) -> None:
        self.client, self.key = client, key

    def send(self, due_in: float, count: int) -> None:
        with self.client.pipeline(transaction=False) as pipe:
            pipe.rpush(self.key, *[f"{due_in:.3f}"] * min(count, CAP))
            pipe.ltrim(self.key, -CAP, -1)
            pipe.execute()

    def open(self, runner_id: str) -> None:
        """Nothing to open: the waiter takes a connection of the app's pool while it blocks
        (pynenc-redis's socket timeout, 5 s by default, is longer than LISTEN)."""

    def receive(self) -> float | None:
        got = self.client.blpop([self.key], timeout=LISTEN)
        return None if got is None else float(got[1])

    def close(self) -> None:
        pass


class SocketWakes:
    """A folder of datagram sockets, one per worker, on the database's host."""

    def __init__(self, db_path: str) -> None:
        # Under the temporary folder, not beside the database: a socket's path is short.
        digest = hashlib.sha1(os.path.realpath(db_path).encode()).hexdigest()[:16]
        self.folder = Path(tempfile.gettempdir()) / f"keyclaim-wake-{digest}"
        self.turn = 0
        self.inbox: socket.socket | None = None
        self.path: Path | None = None
        self.sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sender.setblocking(False)  # a worker's full buffer never holds a producer up

    def send(self, due_in: float, count: int) -> None:
        try:
            names = sorted(os.listdir(self.folder))
        except FileNotFoundError:
            return  # no worker has started on this database
        payload = f"{due_in:.3f}".encode()
        for _ in range(count):
            for _ in names:
                self.turn += 1
                path = self.folder / names[self.turn % len(names)]
                try:
                    self.sender.sendto(payload, str(path))
                    break
                except (ConnectionRefusedError, FileNotFoundError):
                    path.unlink(missing_ok=True)  # its worker is gone
                except BlockingIOError:
                    continue  # woken already, many times over: the next one

    def open(self, runner_id: str) -> None:
        self.folder.mkdir(mode=0o700, exist_ok=True)
        self.path = path = self.folder / hashlib.sha1(runner_id.encode()).hexdigest()[:16]
        path.unlink(missing_ok=True)
        self.inbox = inbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        inbox.bind(str(path))
        inbox.settimeout(LISTEN)

    def receive(self) -> float | None:
        assert self.inbox is not None, "open() first"
        try:
            return float(self.inbox.recv(64))
        except TimeoutError:
            return None

    def close(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            with suppress(OSError):  # the fleet's last worker: the folder goes too
                self.folder.rmdir()
        if self.inbox is not None:
            self.inbox.close()


def channel(orchestrator: Any) -> RedisWakes | SocketWakes:
    """The wakes of the claim's orchestrator: its Redis, or its SQLite database's host."""
    if orchestrator.BACKEND == "redis":
        return RedisWakes(orchestrator.client, orchestrator._k("wake"))
    return SocketWakes(orchestrator.sqlite_db_path)


def notify(wakes: RedisWakes | SocketWakes, due_in: float, count: int, logger: Any) -> None:
    """Send, never failing the enqueue that asks: a store that does not answer loses the hint."""
    try:
        wakes.send(due_in, count)
    except Exception as exc:
        if not (isinstance(exc, OSError) or outage.is_transient(exc)):
            raise
        logger.debug(f"wake not sent ({exc}): the workers look at their idle cadence")
