"""The tasks' HTTP transport: a refused connection tried again, and a 409 sent again.

tasks.py's client calls the provider through it (the harness's own client: demo/provider.py).
"""

import time

import httpx


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
