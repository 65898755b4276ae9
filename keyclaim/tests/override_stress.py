"""Over-admission, line order and the live view while an operator changes keys' limits.

Three real workers, call_keyed on a few keys, the operator lowering, raising and clearing
in a loop, `python -m keyclaim top --once --json` read meanwhile.

python override_stress.py FOLDER [REDIS_URL] (no URL: SQLite in FOLDER). The provider holds
each call a moment and judges it against the limit in force at its arrival: on a raise the
provider's limit rises before the store's; on a lower it drops once the store's holders are
within the new limit (calls in flight stay). Prints one JSON object of counts.
"""

import hashlib
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

from claimkit import HERE, Workers, new_claim, unique, wait_until
from provider import Judge, Served

from keyclaim import overrides

HOLD = 0.08


class Holding(Judge):
    def serve(self, call: Served) -> str:
        with self.lock:
            self.keys[call.key].arrive(call)
            self.arrivals.append((call.key, call.op, self.keys[call.key].slots))
            ends = time.monotonic() + HOLD
            while (left := ends - time.monotonic()) > 0:
                self.lock.wait(left)
            call.ended = True
            return "fenced" if call.fenced else "ok"


folder, redis_url = Path(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else ""
KEYS, CALLS, WORKERS = int(os.environ.get("KEYS", 3)), int(os.environ.get("CALLS", 40)), 3
found: dict = {}
rng = random.Random(int(os.environ.get("SEED", 1)))
with Holding() as provider:
    provider.arrivals = []
    claim = new_claim(folder, provider, redis_url=redis_url)
    task = claim.tasks.call_keyed
    workers = Workers(claim, folder)
    env = {**os.environ, **claim.environment()}
    top = [sys.executable, "-m", "keyclaim", "top", "--app", "claimapp.app", "--once", "--json"]
    stop, tops, changes, errors = threading.Event(), [], [], []

    def operate() -> None:
        while not stop.is_set():
            key = rng.choice(accounts)
            values = {"account_id": key}
            new = rng.choice([1, 2, 3, None])
            slots = 1 if new is None else new
            judged = provider.keys[key]
            try:
                if slots > judged.slots:
                    with provider.lock:
                        judged.slots = slots
                started = (
                    overrides.clear_limit(claim.app, task, values)
                    if new is None
                    else overrides.set_limit(claim.app, task, values, slots=new)
                )
                if slots < judged.slots:
                    wait_until(
                        lambda v=values, s=slots: overrides.held(claim.app, task, v) <= s,
                        30,
                        "below",
                    )
                    with provider.lock:
                        judged.slots = slots
                changes.append((key, new, started))
            except Exception as exc:
                errors.append(repr(exc))
            time.sleep(rng.uniform(0.02, 0.2))

    def look() -> None:
        while not stop.is_set():
            r = subprocess.run(top, cwd=HERE, env=env, capture_output=True, text=True, timeout=60)
            ok = r.returncode == 0 and not r.stderr.strip()
            if ok:
                json.loads(r.stdout)
            tops.append(ok or (r.returncode, r.stderr[-400:]))

    try:
        for _ in range(WORKERS):
            workers.start()
        accounts = [unique() for _ in range(KEYS)]
        ids = {a: [] for a in accounts}
        threads = [threading.Thread(target=operate), threading.Thread(target=look)]
        for t in threads:
            t.start()
        for n in range(CALLS):
            for a in accounts:
                ids[a].append(task(a, f"op{n:04d}").invocation_id)
            time.sleep(0.01)
        every = [i for a in accounts for i in ids[a]]
        try:
            wait_until(
                lambda: all(claim.status(i).is_final() for i in every), 240, "every call to end"
            )
        except AssertionError as exc:
            found["not_final"] = str(exc)
        stop.set()
        for t in threads:
            t.join(90)
        statuses: dict = {}
        for i in every:
            statuses[claim.status(i).value] = statuses.get(claim.status(i).value, 0) + 1
        found["statuses"] = statuses
        found["counts"] = {a: provider.counts(a) for a in accounts}
        found["peaks"] = {a: provider.keys[a].peak for a in accounts}
        found["collisions"] = sum(c["collisions"] for c in found["counts"].values())
        # order: per key, arrivals at the provider against enqueue order
        order = {}
        for a in accounts:
            ops = [op for k, op, _ in provider.arrivals if k == a]
            index = [int(op[2:]) for op in ops]
            late = max((p - i for p, i in enumerate(index)), default=0)
            early = max((i - p for p, i in enumerate(index)), default=0)
            dup = len(index) - len(set(index))
            order[a] = {"arrived": len(index), "most_late": late, "most_early": early, "dup": dup}
        found["order"] = order
        found["changes"], found["errors"] = len(changes), errors
        found["started_by_changes"] = sum(s for *_, s in changes)
        found["tops"] = {"runs": len(tops), "bad": [t for t in tops if t is not True][:3]}
        # never a write: the store's content before and after five reads, everything quiet
        if redis_url:
            import redis

            client = redis.Redis.from_url(redis_url)
            digest = lambda: sorted(  # noqa: E731
                (k, client.dump(k)) for k in client.scan_iter(count=1000)
            )
        else:
            import sqlite3

            def digest() -> str:
                conn = sqlite3.connect(f"file:{claim.db}?mode=ro", uri=True)
                try:
                    return hashlib.sha1("\n".join(conn.iterdump()).encode()).hexdigest()
                finally:
                    conn.close()

        workers.stop_all()
        before = digest()
        for _ in range(3):
            subprocess.run(top, cwd=HERE, env=env, capture_output=True, timeout=60)
        found["top_wrote"] = digest() != before
    finally:
        stop.set()
        workers.stop_all()
print(json.dumps(found))
