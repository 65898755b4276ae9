"""A Redis worker meets a store that blinks, then loses its redis-server and gets a new one.

Run by test_store_blinks.py in an environment with pynenc-redis: python redis_outage.py PORT
FOLDER. It starts the redis-server (saving nothing), a provider and one worker, and prints one
JSON object with what happened; the test asserts on it.
"""

import json
import signal
import sys
from pathlib import Path

from claimkit import WAIT, Workers, new_claim, start_redis, stop_redis, unique, wait_until
from provider import Judge

port, folder = int(sys.argv[1]), Path(sys.argv[2])
server = start_redis(port, folder)
found: dict = {}
with Judge() as provider:
    claim = new_claim(folder, provider, redis_url=f"redis://127.0.0.1:{port}/0")
    workers = Workers(claim, folder)
    try:
        worker = workers.start(blinks="2")

        def called(acct: str) -> list:
            call = claim.tasks.call_keyed(acct, "op")
            (status,) = claim.final(call.invocation_id)
            return [status.value, provider.counts(acct)]

        found["blinked"] = called(unique())
        runner = f"runner:{worker.runner_id}: store"
        stop_redis(server, signal.SIGKILL)
        wait_until(lambda: worker.logged(f"{runner} unreachable"), WAIT, "the worker to notice")
        server = start_redis(port, folder)
        wait_until(lambda: worker.logged(f"{runner} answers again"), WAIT, "it to reconnect")
        found["after_restart"] = called(unique())
        found["alive"] = worker.proc.poll() is None
        # A deploy's SIGTERM while the store is gone: the drain ends, it does not hang.
        stop_redis(server, signal.SIGKILL)
        noticed = lambda: worker.log_path.read_text().count(f"{runner} unreachable") == 2  # noqa: E731
        wait_until(noticed, WAIT, "the worker to notice again")
        worker.signal(signal.SIGTERM)
        found["stopped"] = worker.proc.wait(WAIT)
    finally:
        workers.stop_all()
        if server.poll() is None:
            stop_redis(server)
    log = worker.log_path.read_text()
    found["unreachable"] = log.count(f"{runner} unreachable")
    found["back"] = log.count(f"{runner} answers again")
    found["tracebacks"] = log.count("Traceback")
    found["log"] = log[-4000:]
print(json.dumps(found))
