"""A small provider for the claim's own tests: the judge of one call per key.

`POST /call/<key>/<op>?token=N&slot=k` holds the call in flight (until released, when paused)
and counts, per key, the calls that arrive, the collisions (a call arriving while the key's
quota of calls, `slots`, one unless set, is in flight and not fenced) and the fenced calls (a
token older than the newest its slot of the key has seen: refused on arrival, or, still in
flight, overtaken by a newer one of the same slot). It runs
on a loopback port in a thread of the test process, so tests read its counts directly.
"""

import json
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import parse_qs, unquote, urlsplit

DEADLINE = 30.0  # the longest a paused call is held: a test that forgets to resume still ends


@dataclass
class Served:
    key: str
    op: str
    token: int | None
    slot: int = 0
    fenced: bool = False
    collided: bool = False
    ended: bool = False


@dataclass
class Key:
    calls: list[Served] = field(default_factory=list)
    newest: dict[int, int] = field(default_factory=dict)  # per slot
    slots: int = 1  # calls the key may have in flight
    peak: int = 0  # the most unfenced calls in flight at once

    def arrive(self, call: Served) -> None:
        if call.token is not None:
            newest = self.newest.get(call.slot)
            if newest is not None and call.token < newest:
                call.fenced = True  # late: a newer claim of this slot came first
            else:
                self.newest[call.slot] = call.token
                for older in self.live():  # a newer claim of the slot: its older calls lose
                    if older.slot == call.slot and older.token is not None:
                        older.fenced = older.fenced or older.token < call.token
        if not call.fenced:
            applied = [other for other in self.live() if not other.fenced]
            call.collided = len(applied) >= self.slots
            self.peak = max(self.peak, len(applied) + 1)
        self.calls.append(call)

    def live(self) -> list[Served]:
        return [c for c in self.calls if not c.ended]


class Judge:
    """The provider's state, and the server that feeds it."""

    def __init__(self) -> None:
        self.keys: dict[str, Key] = defaultdict(Key)
        self.lock = threading.Condition()
        self.holding = False
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                parts = urlsplit(self.path)
                _, _, key, op = parts.path.split("/", 3)
                query = parse_qs(parts.query)
                token, slot = query.get("token"), int(query.get("slot", ["0"])[0])
                outcome = provider.serve(
                    Served(unquote(key), unquote(op), int(token[0]) if token else None, slot)
                )
                body = json.dumps({"outcome": outcome}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass  # quiet: the counts are the record

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        # shutdown() waits for the loop's next look: 0.5 s by default, at every test's end.
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.resume()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(DEADLINE)

    def serve(self, call: Served) -> str:
        with self.lock:
            self.keys[call.key].arrive(call)
            self.lock.notify_all()
            if not call.fenced:
                ends = time.monotonic() + DEADLINE
                while self.holding and (left := ends - time.monotonic()) > 0:
                    self.lock.wait(left)
            call.ended = True
            self.lock.notify_all()
            return "fenced" if call.fenced else "ok"

    def pause(self) -> None:
        """Hold every call in flight from now until resume()."""
        with self.lock:
            self.holding = True

    def resume(self) -> None:
        with self.lock:
            self.holding = False
            self.lock.notify_all()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Every call in flight is held until the block ends, however it ends."""
        self.pause()
        try:
            yield
        finally:
            self.resume()

    def wait_in_flight(self, key: str, count: int = 1) -> None:
        self.wait_for(f"{count} call(s) in flight for {key}", lambda: self.in_flight(key) == count)

    def wait_for(
        self, what: str, condition: Callable[[], bool], deadline: float = DEADLINE
    ) -> None:
        """Until condition() holds (read under the provider's lock), or fail saying what."""
        ends = time.monotonic() + deadline
        with self.lock:
            while not condition():
                if (left := ends - time.monotonic()) <= 0:
                    raise AssertionError(f"the provider never saw {what} in {deadline:g}s")
                self.lock.wait(min(left, 0.5))

    def in_flight(self, key: str) -> int:
        return len(self.keys[key].live())

    def counts(self, key: str) -> dict[str, int]:
        calls = self.keys[key].calls
        return {
            "calls": len(calls),
            "applied": sum(not c.fenced for c in calls),
            "collisions": sum(c.collided for c in calls),
            "fenced": sum(c.fenced for c in calls),
        }

    def ops(self, key: str, applied: bool = True) -> list[str]:
        return sorted(c.op for c in self.keys[key].calls if not (applied and c.fenced))
