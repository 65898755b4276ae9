"""The pynenc app and its tasks: the whole idea on one screen.

Run a worker: uv run pynenc --app tasks.app runner start
"""

import httpx
from pynenc import PynencBuilder, context
from pynenc.conf.config_task import ConcurrencyControlType as Mode

import keyclaim
from demo import provider, runners, settings

settings.check_environment()  # a bad DEMO_* variable: ValueError, in one line
API_URL = settings.api_url()
TIMEOUT = settings.seconds("DEMO_CALL_TIMEOUT")  # the longest a call stays in flight

BACKEND, CLAIM = settings.get("DEMO_BACKEND"), settings.get("DEMO_ATOMIC_CLAIM") == "1"

builder = PynencBuilder().app_id("concurrency_demo")
if BACKEND == "redis":  # pynenc-redis; README "Scale out safely"
    builder = builder.redis(url=settings.get("REDIS_URL"))
else:  # pynenc's SQLite classes; with the claim, each connection opened once: docs/speed.md
    builder = builder.sqlite(settings.get("DEMO_DB"))
    if CLAIM and settings.get("DEMO_SQLITE_CONNECTIONS") == "kept":
        builder = keyclaim.keep_connections(builder)
builder = (
    builder.thread_runner(min_threads=1, max_threads=settings.MAX_THREADS)
    .runner_tuning(runner_loop_sleep_time_sec=settings.seconds("DEMO_RUNNER_SLEEP"))
    .logging_stream("stdout")
    .logging_level(settings.get("DEMO_LOG_LEVEL"))
    .max_pending_seconds(3.0)
)
if CLAIM:  # one call per key across workers, and under faults: keyclaim/README.md
    builder = keyclaim.install(
        builder, settings.seconds("DEMO_DEAD_AFTER"), TIMEOUT, **runners.for_claim()
    )
# DEMO_RUNNER's runner, which says what it runs on as it starts: demo/runners.py
app = runners.select(builder, CLAIM).build()
keyclaim.check(app)  # on what pynenc resolved: its PYNENC__* overrides rank above this
runners.check(app)  # and a runner of demo/runners.py's, which joins the fleet as it starts

# One client for every call (a fresh one loads TLS certificates each time). A call names its
# invocation (not the attempt) in an Idempotency-Key: run again, it is replayed, not reapplied.
http = httpx.Client(base_url=API_URL, timeout=TIMEOUT, transport=provider.CallTransport(TIMEOUT))


def _hit(account_id: str, op: str) -> str:
    path = f"/call/{settings.path_part(account_id)}/{settings.path_part(op)}"  # or ValueError
    token = keyclaim.token(app)  # with the claim: its fencing token, which only grows
    fence = {} if token is None else {"token": token}
    if slot := keyclaim.slot(app):  # N per account: the token is its slot's (0 unless sent)
        fence["slot"] = slot
    key = {"Idempotency-Key": context.get_dist_invocation_context(app.app_id).invocation_id}
    r = http.post(path, params=fence, headers=key)
    if r.is_error:  # said in words: pynenc cannot store httpx's own error and rebuild it
        raise RuntimeError(f"{account_id} {op}: the provider answered {r.status_code} {r.text}")
    if (outcome := r.json()["outcome"]) == "fenced":  # an older claim's call: not applied
        raise keyclaim.Fenced(f"{account_id} {op}: the provider refused token {token}")
    if outcome == "throttled":  # beyond the account's rate: a 429, not applied
        raise RuntimeError(f"{account_id} {op}: the provider throttled it")
    return outcome


@app.task
def call_unsafe(account_id: str, op: str) -> str:
    return _hit(account_id, op)


@app.task(
    running_concurrency=Mode.KEYS,
    key_arguments=("account_id",),
    reroute_on_concurrency_control=True,
)
def call_keyed(account_id: str, op: str) -> str:
    return _hit(account_id, op)


@app.task(
    running_concurrency=Mode.KEYS,
    key_arguments=("account_id",),
    reroute_on_concurrency_control=False,
)
def call_keyed_drop(account_id: str, op: str) -> str:
    return _hit(account_id, op)


@app.task(
    running_concurrency=Mode.KEYS,
    registration_concurrency=Mode.KEYS,
    key_arguments=("account_id",),
    reroute_on_concurrency_control=True,
)
def refresh_once(account_id: str) -> str:
    return _hit(account_id, "refresh")


# Beyond the article (sample.py --limits, with the claim): up to 2 calls per account at once,
# and 5 calls a second: keyclaim/README.md. pynenc's app.task takes no such option.
@keyclaim.limit(slots=settings.SLOTS)
@app.task(
    running_concurrency=Mode.KEYS,
    key_arguments=("account_id",),
    reroute_on_concurrency_control=True,
)
def call_slots(account_id: str, op: str) -> str:
    return _hit(account_id, op)


@keyclaim.limit(slots=settings.SLOTS, rate=settings.RATE, per=settings.RATE_PER)
@app.task(
    running_concurrency=Mode.KEYS,
    key_arguments=("account_id",),
    reroute_on_concurrency_control=True,
)
def call_rated(account_id: str, op: str) -> str:
    return _hit(account_id, op)
