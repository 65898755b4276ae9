"""A pynenc app with a trigger: `follow` runs after each `lead` that succeeds.

A worker runs it: `pynenc --app triggerapp.app runner start`, with KEYCLAIM_TEST_DB and
KEYCLAIM_TEST_APP_ID in its environment: on SQLite with kept connections (test_connections.py),
or with KEYCLAIM_TEST_REDIS on Redis with the claim (redis_quiet.py). The runner's atomic
service, which turns a recorded condition into the triggered call, runs every 0.6 s here.
"""

import os

from pynenc import PynencBuilder
from pynenc.trigger import TriggerBuilder

import keyclaim

builder = PynencBuilder().app_id(os.environ.get("KEYCLAIM_TEST_APP_ID", "keyclaim_triggers"))
if redis_url := os.environ.get("KEYCLAIM_TEST_REDIS"):
    builder = builder.redis(url=redis_url)
else:
    builder = builder.sqlite(os.environ.get("KEYCLAIM_TEST_DB", "triggers.db"))
builder = (
    builder.thread_runner(min_threads=1, max_threads=4)
    .runner_tuning(runner_loop_sleep_time_sec=0.05)
    .logging_stream("stdout")
    .custom_config(
        atomic_service_interval_minutes=0.01,
        atomic_service_spread_margin_minutes=0.0,
        atomic_service_check_interval_minutes=0.002,
    )
)
if redis_url:  # the claim's trigger on Redis: keyclaim.quiet_redis
    app = keyclaim.install(builder, 15.0, 10.0).build()
else:
    app = keyclaim.keep_connections(builder).build()


@app.task
def lead(n: int) -> int:
    return n


@app.task(triggers=TriggerBuilder().on_status(lead))
def follow() -> str:
    return "followed"
