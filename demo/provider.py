"""The stand-in provider (api_server.py), seen from the harness: the demo's oracle, over HTTP.

Scenarios own it for a run, reset it and read its counts (the fault harness and the tests also
pause it, served by stand_in/held.py, through request: tools/faults.py).
"""

import contextlib
from collections.abc import Iterator
from urllib.parse import urlsplit

from demo import settings


class ProviderError(ConnectionError):
    """The API answered with an error, or not at all (httpx's error, in its words)."""


class ProviderUnreachable(ProviderError):
    """The API is not answering where we looked."""


class ProviderBusy(ProviderError):
    """Another run owns the provider: resetting it would wipe that run's counts."""


class Provider:
    def __init__(self, base_url: str | None = None) -> None:
        # httpx is imported here, not with the module: sample.py starts its children first.
        import httpx

        self.base_url = base_url or settings.api_url()
        self.http = httpx.Client(base_url=self.base_url, timeout=10.0)
        self.run_id: str | None = None  # while this client's run owns the provider

    def request(self, method: str, path: str, **params: object) -> dict:
        import httpx

        try:
            r = self.http.request(method, path, params=params or None)
            if r.status_code == httpx.codes.CONFLICT:
                raise ProviderBusy(f"{r.json()['detail']} ({self.base_url})")
            return r.raise_for_status().json()
        except httpx.TransportError as exc:
            port = urlsplit(self.base_url).port
            workers = f", and start the workers with DEMO_API_PORT={port} so they call it too"
            if str(port) == settings.DEFAULTS["DEMO_API_PORT"]:
                workers = ""
            raise ProviderUnreachable(
                f"no API answers at {self.base_url} ({type(exc).__name__}); start it with: "
                f"uv run uvicorn api_server:app --port {port}{workers}"
            ) from exc
        except httpx.HTTPError as exc:
            raise ProviderError(str(exc)) from exc

    def reset(
        self, label: str, hold: float, accounts: dict[str, int] | None = None, **quota: object
    ) -> None:
        """Start a new scenario: forget every count, and hold each call this long. quota:
        each account's, if not one call in flight (slots=N, rate=R, per=S); accounts: the
        slots of those with their own."""
        run = {} if self.run_id is None else {"run": self.run_id}
        self.request("POST", "/reset", label=label, hold=hold, **run, **quota)
        for account, slots in (accounts or {}).items():
            self.request("POST", f"/quota/{account}", slots=slots)

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
