"""The pynenc app and its tasks: the whole idea on one screen.

Run a worker: uv run pynenc --app tasks.app runner start
"""

from pynenc import PynencBuilder, context
from pynenc.conf.config_task import ConcurrencyControlType as Mode

import keyclaim
from demo import runners, settings
from stand_in.client import ProviderClient

settings.check_environment()  # a bad DEMO_* variable: ValueError, in one line
API_URL = settings.api_url()
TIMEOUT = settings.seconds("DEMO_CALL_TIMEOUT")  # the longest a call stays in flight

BACKEND, CLAIM = settings.get("DEMO_BACKEND"), settings.get("DEMO_ATOMIC_CLAIM") == "1"

builder = PynencBuilder().app_id("concurrency_demo")
if BACKEND == "redis":  # pynenc-redis; README "Scale out safely"
    builder = builder.redis(url=settings.get("REDIS_URL"))
else:  # pynenc's SQLite classes, each connection opened once: docs/speed.md
    builder = builder.sqlite(settings.get("DEMO_DB"))
    if settings.get("DEMO_SQLITE_CONNECTIONS") == "kept":
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
        builder, BACKEND, settings.seconds("DEMO_DEAD_AFTER"), TIMEOUT, **runners.for_claim()
    )
# DEMO_RUNNER's runner, which says what it runs on as it starts: demo/runners.py
app = runners.select(builder, CLAIM).build()
keyclaim.check(app)  # on what pynenc resolved: its PYNENC__* overrides rank above this
runners.check(app)  # and a runner of demo/runners.py's, which joins the fleet as it starts

provider = ProviderClient(API_URL, TIMEOUT)  # its path, errors and retries: stand_in/client.py


def _hit(account_id: str, op: str) -> str:
    # The call names its invocation (not the attempt) in an Idempotency-Key: run again, it is
    # replayed, not reapplied. With the claim, its fencing token, which only grows, and slot.
    key = context.get_dist_invocation_context(app.app_id).invocation_id
    return provider.call(account_id, op, key, keyclaim.token(app), keyclaim.slot(app))


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
