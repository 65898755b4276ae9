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
CLAIM = settings.get("DEMO_ATOMIC_CLAIM") == "1"  # and its dead-after window, DEMO_DEAD_AFTER
DEAD_AFTER = settings.seconds("DEMO_DEAD_AFTER")
# Beyond the article: F's calls in flight, G's calls a second, D's merge window (the claim's)
SLOTS, RATE, PER, MERGE = 2, 5, 1.0, 0.25

builder = (
    PynencBuilder()
    .app_id("concurrency_demo")
    .sqlite(settings.get("DEMO_DB"))
    .thread_runner(min_threads=1, max_threads=8)
    .logging_stream("stdout")
    .logging_level(settings.get("DEMO_LOG_LEVEL"))
    .max_pending_seconds(3.0)
)
if settings.get("DEMO_BACKEND") == "redis":  # pynenc-redis instead: README "Scale out safely"
    builder = builder.redis(url=settings.get("REDIS_URL"))
if CLAIM:  # one call per key across workers, hosts and faults: keyclaim/README.md
    builder = keyclaim.install(builder, DEAD_AFTER, TIMEOUT, **runners.for_claim())
app = runners.select(builder, CLAIM).build()  # DEMO_RUNNER's, saying what it runs on as it starts
keyclaim.check(app)  # on what pynenc resolved: its PYNENC__* overrides rank above the builder
runners.check(app)

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


@keyclaim.limit(merge=MERGE)  # the claim's: a burst merges by design, not by a worker's timing
@app.task(
    running_concurrency=Mode.KEYS,
    registration_concurrency=Mode.KEYS,
    key_arguments=("account_id",),
    reroute_on_concurrency_control=True,
)
def refresh_once(account_id: str) -> str:
    return _hit(account_id, "refresh")


# ---- Beyond the article (with the claim: sample.py --atomic-claim --limits) ----------------
# Up to SLOTS calls per account at once (F), RATE calls per PER seconds (G), a tier's slots (H):
# keyclaim.limit above pynenc's app.task, which takes no such option (keyclaim/README.md).
KEYED = dict(running_concurrency=Mode.KEYS, key_arguments=("account_id",))


@keyclaim.limit(slots=SLOTS)
@app.task(**KEYED, reroute_on_concurrency_control=True)
def call_slots(account_id: str, op: str) -> str:
    return _hit(account_id, op)


@keyclaim.limit(slots=SLOTS, rate=RATE, per=PER)
@app.task(**KEYED, reroute_on_concurrency_control=True)
def call_rated(account_id: str, op: str) -> str:
    return _hit(account_id, op)


def tier(account_id: str) -> int:  # H's rule: the same in every process, from the id alone
    return 3 if account_id.startswith("gold") else 1


@keyclaim.limit(rule=tier)  # a gold account's calls three at once, the others' one
@app.task(**KEYED, reroute_on_concurrency_control=True)
def call_tiered(account_id: str, op: str) -> str:
    return _hit(account_id, op)
