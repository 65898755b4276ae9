"""The stand-in provider (api_server.py), seen from outside: the demo's oracle, over HTTP.

Scenarios reset it and read its counts (the fault harness and the tests also pause it, served
by tools/held.py, through request: tools/faults.py). The tasks' own calls go through
demo/transport.py. This client is the standard library's: sample.py imports it before it
starts the API and the workers, and httpx alone would take 0.4 s of that start.
"""

import contextlib
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

from demo import settings

# Loopback only: no proxy from the environment comes between the demo and its provider.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ProviderUnreachable(ConnectionError):
    """The API is not answering where we looked."""


class ProviderBusy(ConnectionError):
    """Another run owns the provider: resetting it would wipe that run's counts."""


class ProviderRefused(ConnectionError):
    """The API answered with an error: what it said, in one line."""


class Provider:
    """The provider's HTTP client: reset, report, timeline and health."""

    def __init__(self, base_url: str | None = None) -> None:
        self.base_url = (base_url or settings.api_url()).rstrip("/")
        self.run_id: str | None = None  # while this client's run owns the provider

    def request(self, method: str, path: str, **params: object) -> dict:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        asked = urllib.request.Request(f"{self.base_url}{path}{query}", method=method)
        try:
            with OPENER.open(asked, timeout=10.0) as answer:
                return json.load(answer)
        except urllib.error.HTTPError as exc:  # the API answered, with an error
            detail = exc.read().decode(errors="replace")
            if exc.code == 409:
                raise ProviderBusy(f"{json.loads(detail)['detail']} ({self.base_url})") from None
            raise ProviderRefused(
                f"{method} {path}: the API answered {exc.code} {detail}"
            ) from None
        except OSError as exc:  # refused, reset, timed out (URLError is one)
            port = urllib.parse.urlsplit(self.base_url).port
            workers = (
                ""
                if str(port) == settings.DEFAULTS["DEMO_API_PORT"]
                else (f", and start the workers with DEMO_API_PORT={port} so they call it too")
            )
            reason = type(getattr(exc, "reason", exc)).__name__
            raise ProviderUnreachable(
                f"no API answers at {self.base_url} ({reason}); start it with: "
                f"uv run uvicorn api_server:app --port {port}{workers}"
            ) from exc

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
            with contextlib.suppress(ConnectionError):
                self.request("DELETE", f"/runs/{run_id}")

    def report(self) -> dict:
        return self.request("GET", "/report")

    def timeline(self) -> list[dict[str, object]]:
        return self.request("GET", "/timeline")["calls"]

    def health(self) -> dict:
        return self.request("GET", "/health")
