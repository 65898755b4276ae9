"""The quiet trigger on Redis: no lookups in an app without triggers, a worker's still fires.

keyclaim.quiet_redis, against pynenc-redis's own trigger, and a real worker's trigger.

Run by test_redis_claim.py in an environment with pynenc-redis, against a private redis-server:
python redis_quiet.py REDIS_URL FOLDER (for the worker's log). It prints one JSON object with
what it counted; the test asserts on it.
"""

import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import claimapp
from claimkit import WAIT, Worker, wait_until
from pynenc import PynencBuilder
from pynenc.invocation.status import InvocationStatus as S
from pynenc_redis.trigger.redis_trigger import RedisTrigger

import keyclaim
from keyclaim.quiet_redis import QuietRedisTrigger

URL = sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379/0"
FOLDER = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(tempfile.mkdtemp(prefix="redis-quiet-"))
HERE = Path(__file__).parent


class CountingQuietRedis(QuietRedisTrigger):
    """The quiet trigger, counting the lookups it lets through to pynenc-redis's."""

    lookups = 0

    def get_conditions_sourced_from_task(self, *args: Any, **kwargs: Any) -> list:
        type(self).lookups += 1
        return super().get_conditions_sourced_from_task(*args, **kwargs)


class CountingStockRedis(RedisTrigger):
    """pynenc-redis's own trigger, counted the same way."""

    lookups = 0

    def get_conditions_sourced_from_task(self, *args: Any, **kwargs: Any) -> list:
        type(self).lookups += 1
        return super().get_conditions_sourced_from_task(*args, **kwargs)


def lookups(trigger: str) -> int:
    """Twenty calls registered, with this trigger: the lookups it made."""
    builder = PynencBuilder().app_id(f"quiet_{uuid.uuid4().hex[:8]}").redis(url=URL)
    builder = keyclaim.install(builder.thread_runner(), 15.0, 10.0)
    app = builder.custom_config(trigger_cls=trigger).build()
    tasks = claimapp.bound(app, "http://127.0.0.1:9")  # nothing here runs a call
    for n in range(20):
        tasks.call_unsafe(f"acct{n}", "op")
    found = type(app.trigger).lookups
    app.purge()
    return found


def a_worker_fires_its_trigger() -> dict[str, Any]:
    """A worker runs triggerapp.app on Redis: this process, which registered no trigger, finds
    the worker's in the store, and `follow` runs once after `lead`."""
    env = {
        **os.environ,
        "KEYCLAIM_TEST_REDIS": URL,
        "KEYCLAIM_TEST_APP_ID": f"triggers_{uuid.uuid4().hex[:8]}",
        "PYTHONUNBUFFERED": "1",
    }
    os.environ.update({k: env[k] for k in ("KEYCLAIM_TEST_REDIS", "KEYCLAIM_TEST_APP_ID")})
    import triggerapp  # built on this script's Redis and app id

    app = triggerapp.app
    argv = [sys.executable, "-m", "pynenc", "--app", "triggerapp.app", "runner", "start"]
    log_path = FOLDER / "worker.log"
    log = log_path.open("w")
    proc = subprocess.Popen(
        argv, cwd=HERE, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    worker = Worker(proc, log_path, log=log)
    try:
        seen = wait_until(app.trigger.any_sourced, WAIT, "the worker's trigger in the store")
        triggerapp.lead(1)

        def followed() -> list[str]:
            found = app.orchestrator.get_existing_invocations(task=triggerapp.follow)
            return [
                i for i in map(str, found) if app.orchestrator.get_invocation_status(i) == S.SUCCESS
            ]

        done = wait_until(followed, WAIT, "follow to run after lead")
        return {"trigger": type(app.trigger).__name__, "seen": seen, "followed": len(done)}
    finally:
        worker.stop()  # SIGTERM, then SIGKILL past the deadline
        app.purge()


if __name__ == "__main__":
    found = {"stock": lookups("CountingStockRedis"), "quiet": lookups("CountingQuietRedis")}
    print(json.dumps({**found, **a_worker_fires_its_trigger()}))
