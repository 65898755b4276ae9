"""The tasks' client of the provider: one call, its ids in the URL path, its answer in words.

An id the provider cannot take is refused before any call (path_part); an error is said in
words (RuntimeError), "fenced" raises keyclaim.Fenced; CallTransport sends again what it may.
"""

import re
import time
from urllib.parse import quote

import httpx

import keyclaim
from stand_in import NAME_PATTERN


def path_part(value: object) -> str:
    """value as one part of the provider's URL path, encoded; ValueError, in one line, for a
    value the provider cannot take. An id is text: 42 is refused, never sent as "42", since the
    claim and pynenc's keys would tell it from "42" while the provider would not."""
    # "." and ".." would be read as path steps (the client resolves them): never an id.
    if not isinstance(value, str) or not re.fullmatch(NAME_PATTERN, value) or not value.strip("."):
        raise ValueError(
            f"{value!r} is not an id the provider takes: 1-64 characters of A-Za-z0-9_.:-, "
            "not dots alone"
            + ("" if isinstance(value, str) else f", as text (not {type(value).__name__})")
        )
    return quote(value, safe=":")


class CallTransport(httpx.HTTPTransport):
    """The tasks' transport: a refused connection is tried 4 times more (about 3.5 s), and a
    call answered 409 for its Idempotency-Key is sent again every RETRY_409_SECONDS, for up to
    `patience` seconds (the longest a call is in flight), until that key's first call ends: its
    fate was not known yet (docs/faults.md says why). Past `patience`, the 409 is returned."""

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


class ProviderClient(httpx.Client):
    """One client for every call of a process (a fresh one loads TLS certificates each time)."""

    def __init__(self, base_url: str, timeout: float) -> None:
        super().__init__(base_url=base_url, timeout=timeout, transport=CallTransport(timeout))

    def call(self, account_id: str, op: str, key: str, token: int | None, slot: int | None) -> str:
        """The call's outcome, "ok" or "collision", sent with its Idempotency-Key and, with the
        claim, its fencing token and the token's slot; ValueError for an id before any call."""
        path = f"/call/{path_part(account_id)}/{path_part(op)}"
        fence = {} if token is None else {"token": token}
        if slot:  # N per account: the token is its slot's (0 unless sent)
            fence["slot"] = slot
        r = self.post(path, params=fence, headers={"Idempotency-Key": key})
        if r.is_error:  # said in words: pynenc cannot store httpx's own error and rebuild it
            raise RuntimeError(f"{account_id} {op}: the provider answered {r.status_code} {r.text}")
        if (outcome := r.json()["outcome"]) == "fenced":  # an older claim's call: not applied
            raise keyclaim.Fenced(f"{account_id} {op}: the provider refused token {token}")
        if outcome == "throttled":  # beyond the account's rate: a 429, not applied
            raise RuntimeError(f"{account_id} {op}: the provider throttled it")
        return outcome
