"""The stand-in provider (api_server.py), seen from outside: the demo's oracle, over HTTP.

Scenarios reset it and read its counts (the fault harness and the tests also pause it, served
by tools/held.py, through request: tools/faults.py). The tasks' own calls go through CallTransport.
"""

import contextlib
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx

from demo import settings


class ProviderUnreachable(ConnectionError):
    """The API is not answering where we looked."""


class ProviderBusy(ConnectionError):
    """Another run owns the provider: resetting it would wipe that run's counts."""


class Provider:
    """The provider's HTTP client: reset, report, timeline and health."""

    def __init__(self, base_url: str | None = None) -> None:
        self.base_url = base_url or settings.api_url()
        self.http = httpx.Client(base_url=self.base_url, timeout=10.0)
        self.run_id: str | None = None  # while this client's run owns the provider

    def request(self, method: str, path: str, **params: object) -> dict:
        try:
            r = self.http.request(method, path, params=params or None)
        except httpx.TransportError as exc:
            port = urlsplit(self.base_url).port
            workers = (
                ""
                if str(port) == settings.DEFAULTS["DEMO_API_PORT"]
                else (f", and start the workers with DEMO_API_PORT={port} so they call it too")
            )
            raise ProviderUnreachable(
                f"no API answers at {self.base_url} ({type(exc).__name__}); start it with: "
                f"uv run uvicorn api_server:app --port {port}{workers}"
            ) from exc
        if r.status_code == httpx.codes.CONFLICT:
            raise ProviderBusy(f"{r.json()['detail']} ({self.base_url})")
        r.raise_for_status()
        return r.json()

    def reset(self, label: str, hold: float, **quota: object) -> None:
        """Start a new scenario: forget every count, and hold each call this long. quota:
        each account's, if not one call in flight (slots=N, rate=R, per=S)."""
        run = {} if self.run_id is None else {"run": self.run_id}
        self.request("POST", "/reset", label=label, hold=hold, **run, **quota)

    @contextlib.contextmanager
    def owned(self, label: str, lease: float) -> Iterator[None]:
        """Inside, this client's run owns the provider: another run's reset is refused, and
        this one's is refused while another run owns it (ProviderBusy). Each reset keeps it
        for `lease` more seconds, so a run that died lets go of it by then."""
        self.run_id = self.request("POST", "/runs", label=label, lease=lease)["run"]
        try:
            yield
        finally:
            run_id, self.run_id = self.run_id, None
            with contextlib.suppress(httpx.HTTPError, ConnectionError):
                self.request("DELETE", f"/runs/{run_id}")

    def report(self) -> dict:
        return self.request("GET", "/report")

    def timeline(self) -> list[dict[str, object]]:
        return self.request("GET", "/timeline")["calls"]

    def health(self) -> dict:
        return self.request("GET", "/health")


class CallTransport(httpx.HTTPTransport):
    """The tasks' transport: a refused connection is tried 4 times more (about 3.5 s), and a
    call answered 409 for its Idempotency-Key is sent again until that key's first call ends.

    A 409 says the key's first call (the same invocation, run again while its first run's call
    is still served) is in flight, and that this one was not applied. Its fate is unknown yet:
    applied, or fenced and not. Taking the 409 for a success would report a fenced call's
    effect as done; failing would report an applied one as not. So the call is sent again,
    every RETRY_409_SECONDS, for up to `patience` seconds (the longest a call is in flight):
    the provider then answers from its store what the first call did, or applies this one if
    the first was not applied. Past `patience`, the 409 is returned, and the task fails on it.
    """

    RETRY_409_SECONDS = 0.1

    def __init__(self, patience: float) -> None:
        super().__init__(retries=4)
        self.patience = patience

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        deadline = time.monotonic() + self.patience
        while True:
            response = super().handle_request(request)
            if (
                response.status_code != httpx.codes.CONFLICT
                or "Idempotency-Key" not in request.headers
                or time.monotonic() >= deadline
            ):
                return response
            response.read()
            response.close()
            time.sleep(self.RETRY_409_SECONDS)
