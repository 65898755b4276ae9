"""A wake worker's listener outlives its Redis: killed, started again, then a call wakes it.

Run by test_wake.py in an environment with pynenc-redis: python redis_wake_restart.py PORT
FOLDER. It starts the redis-server (saving nothing), a provider and one wake worker whose idle
cadence is a minute, and prints one JSON object with what happened; the test asserts on it.
"""

import json
import signal
import sys
from pathlib import Path

from claimkit import WAIT, Workers, new_claim, start_redis, stop_redis, unique, wait_until
from provider import Judge
from wake_run import loops

port, folder = int(sys.argv[1]), Path(sys.argv[2])
server = start_redis(port, folder)
with Judge() as provider:
    claim = new_claim(folder, provider, redis_url=f"redis://127.0.0.1:{port}/0")
    workers = Workers(claim, folder)
    try:
        worker = workers.start(runner="wake", idle="60")
        stop_redis(server, signal.SIGKILL)
        listener = "wake listener: store"
        wait_until(lambda: worker.logged(f"{listener} unreachable"), WAIT, "the listener to notice")
        server = start_redis(port, folder)
        wait_until(lambda: worker.logged(f"{listener} answers again"), WAIT, "it to reconnect")
        call = claim.tasks.call_keyed(unique(), "op")
        (status,) = claim.final(call.invocation_id, deadline=20)
    finally:
        workers.stop_all()
        if server.poll() is None:
            stop_redis(server)
    log = worker.log_path.read_text()
print(json.dumps({"status": status.value, "looks": loops(log)}))
