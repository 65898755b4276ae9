"""The live view against a live run: one real worker, keys holding and calls waiting.

Run by test_top.py: python top_live.py FOLDER [REDIS_URL] (no URL: SQLite in FOLDER), in an
environment with pynenc-redis for Redis. The provider holds every call in flight: key A (one
slot) holds one and has two in line; key B (two slots) holds two and has one in line; key C
(two slots, one call per 4 s) holds one running and one waiting for its window. It prints one
JSON object: the worker, top's --once --json document, its --once text, and the exit status
of a refreshing top stopped by SIGINT; the test asserts on it.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from claimkit import HERE, WAIT, Workers, new_claim, unique, wait_until
from provider import Judge

import keyclaim

folder, redis_url = Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else ""
found: dict = {}
with Judge() as provider:
    claim = new_claim(folder, provider, redis_url=redis_url)
    workers = Workers(claim, folder)
    env = {**os.environ, **claim.environment()}
    top = [sys.executable, "-m", "keyclaim", "top", "--app", "claimapp.app", "--once"]
    try:
        worker = workers.start()
        keys = found["keys"] = {"A": unique(), "B": unique(), "C": unique()}
        for name, slots in (("B", 2), ("C", 2)):
            provider.keys[keys[name]].slots = slots
        with provider.paused():
            for n in range(3):
                claim.tasks.call_keyed(keys["A"], f"op{n}")
                claim.tasks.call_two(keys["B"], f"op{n}")
            for n in range(2):
                claim.tasks.call_rated(keys["C"], f"op{n}")
            for name, count in (("A", 1), ("B", 2), ("C", 1)):
                provider.wait_in_flight(keys[name], count)
            wait_until(lambda: keyclaim.inspect.waiting(claim.app) == 3, WAIT, "3 in line")
            run = lambda *more: subprocess.run(  # noqa: E731
                [*top, *more], cwd=HERE, env=env, capture_output=True, text=True, timeout=WAIT
            )
            as_json, as_text = run("--json"), run()
            found["json"] = json.loads(as_json.stdout) if as_json.returncode == 0 else None
            found["text"], found["errors"] = as_text.stdout, as_json.stderr + as_text.stderr
            refreshing = subprocess.Popen(
                top[:-1], cwd=HERE, env=env, stdout=subprocess.PIPE, text=True
            )
            assert refreshing.stdout is not None
            while (line := refreshing.stdout.readline()) and "FLEET" not in line:
                pass  # until its first frame is out (or it ended: then its status tells)
            refreshing.send_signal(signal.SIGINT)
            found["interrupted"] = refreshing.wait(WAIT)
        found["worker"] = {"runner_id": worker.runner_id, "pid": worker.proc.pid}
    finally:
        workers.stop_all()
print(json.dumps(found))
