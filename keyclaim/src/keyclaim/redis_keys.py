"""The claim on Redis: its keys, and the watched transaction every step of it runs in.

The base of keyclaim.redis_claim's orchestrator. Its keys sit under the app's pynenc key
prefix. Written and tested against pynenc 0.3.1 with pynenc-redis 0.3.0 (keyclaim.versions);
retired with keyclaim.redis_claim.
"""

import json
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pynenc.exceptions import InvocationStatusError
from pynenc.invocation.status import InvocationStatus, InvocationStatusRecord
from pynenc_redis.orchestrator import RedisOrchestrator
from redis.client import Pipeline
from redis.exceptions import WatchError

from keyclaim import overrides
from keyclaim.decision import Holder, rate_free_at
from keyclaim.keys import fence_key
from keyclaim.orchestrator import AtomicClaim

if TYPE_CHECKING:
    from pynenc.invocation.dist_invocation import DistributedInvocation

    from keyclaim.limits import Limit

S = InvocationStatus
# A claim whose watched keys keep changing is tried this often, with growing pauses.
REDIS_ATTEMPTS = 50
BACKOFF_SECONDS = (0.001, 0.05)  # first pause, longest pause


class StatusContention(InvocationStatusError):
    """A watched status change that other writers kept beating, every time it was tried."""


def seconds_of(redis_time: tuple[int, int]) -> float:
    """Redis TIME (seconds, microseconds) as seconds."""
    return redis_time[0] + redis_time[1] / 1_000_000


class RedisClaimKeys(AtomicClaim, RedisOrchestrator):
    """The claim's keys in Redis, and its transaction: a concurrent write to anything a step
    watched fails the EXEC, and the whole read-decide-write is tried again on fresh data."""

    attempts = REDIS_ATTEMPTS

    def _transaction[T](
        self, step: Callable[["Pipeline"], T], *watched: str
    ) -> tuple[T | None, int]:
        """step(pipe) under WATCH (it may WATCH more), then EXEC; again on a WatchError, after
        a growing pause. Returns step's value and how many tries failed; (None, attempts) when
        none got through (a claim then goes back on the queue)."""
        for attempt in range(self.attempts):
            with self.client.pipeline() as pipe:
                try:
                    if watched:
                        pipe.watch(*watched)
                    value = step(pipe)
                    pipe.execute()
                    return value, attempt
                except WatchError:
                    time.sleep(self._backoff(attempt))
        return None, self.attempts

    def _backoff(self, attempt: int) -> float:
        """The pause after a failed try: it doubles with each one, up to the longest, and
        jitters, so that claimers who collided do not collide again in step."""
        first, longest = BACKOFF_SECONDS
        pause = min(longest, first * 2**attempt)
        return random.uniform(pause / 2, pause)

    def _k(self, *parts: str) -> str:
        return self.key.prefix + ":".join(parts)

    def _hold(self, pipe: Pipeline, line: str, slot: int, invocation_id: str) -> None:
        """Write (inside MULTI) that the invocation holds this slot of the key."""
        pipe.hset(self._k("slots", line), str(slot), invocation_id)
        pipe.set(self._k("holds", invocation_id), line)
        pipe.set(self._k("slot", invocation_id), slot)
        pipe.sadd(self._k("holders"), invocation_id)

    def _plan_release(self, pipe: Pipeline, invocation_id: str) -> list[Callable[[Pipeline], Any]]:
        """Read (watched) what a final invocation lets go of; return the writes to do so: its
        claim's record goes, and its slot to the head of its line (none: the idle slot's token
        counter is folded into the floor; so too below a lowered limit), or its place in a line
        is given up."""
        holds, parked = self._k("holds", invocation_id), self._k("parked", invocation_id)
        slot_key, dues = self._k("slot", invocation_id), self._k("dues")
        pipe.watch(holds, parked, slot_key)
        writes: list[Callable[[Pipeline], Any]] = [
            lambda p: p.zrem(dues, invocation_id),
            lambda p: p.hdel(self._k("fences"), invocation_id),
            lambda p: p.hdel(self._k("claimed_at"), invocation_id),
        ]
        if (line := pipe.get(holds)) is None:
            if (waiting_in := pipe.get(parked)) is None:
                return writes
            waiting = self._k("line", waiting_in.decode())
            writes.append(lambda p: p.lrem(waiting, 1, invocation_id))
            return [*writes, lambda p: p.delete(parked)]
        line = line.decode()
        slot = (pipe.get(slot_key) or b"0").decode()
        slots, queue = self._k("slots", line), self._k("line", line)
        pipe.watch(slots, queue)
        holders = self._k("holders")
        writes += [lambda p: p.delete(holds, slot_key), lambda p: p.srem(holders, invocation_id)]
        head = pipe.lindex(queue, 0)
        if head is None or not overrides.redis_has_room(self, pipe, line, head.decode()):
            counter, floor = self._k("fence", fence_key(line, int(slot))), self._k("fence_floor")
            pipe.watch(counter, floor)
            last = max(int(pipe.get(counter) or 0), int(pipe.get(floor) or 0))
            return [
                *writes,
                lambda p: p.hdel(slots, slot),
                lambda p: p.delete(counter),
                lambda p: p.set(floor, last),
            ]
        head = head.decode()
        return [
            *writes,
            lambda p: p.lpop(queue),
            lambda p: p.delete(self._k("parked", head)),
            lambda p: self._hold(p, line, int(slot), head),
            lambda p: p.rpush(self.app.broker.key.default_queue(), head),
        ]

    def _holders(self, pipe: Pipeline, line: str) -> list[Holder]:
        """The key's holders, one per slot taken, watched along with their statuses; a final
        one lets go of its slot first. Not the key's line: a claim or a registration only
        appends to it, and a release, which takes its head, watches it (watched here, each
        call parked behind a key sent that key's claim back: 300-660 a run at 500 keys)."""
        slots_key = self._k("slots", line)
        pipe.watch(slots_key)
        taken = sorted((int(k), v.decode()) for k, v in pipe.hgetall(slots_key).items())
        holders = []
        for slot, holder_id in taken:
            pipe.watch(self.key.invocation_to_status(holder_id))
            record = self._read_status(pipe, holder_id)
            if record is None or record.status.is_final():
                # Ended without letting go: free the slot here, and let the next claim see it.
                writes = self._plan_release(pipe, holder_id)  # it WATCHes: before MULTI
                pipe.multi()
                for write in writes:
                    write(pipe)
                pipe.execute()
                raise WatchError("a stale holder was released: read again")
            beat = pipe.hget(self._k("beats"), record.runner_id or "")
            holders.append(Holder(holder_id, record, float(beat) if beat else None, slot))
        return holders

    def _rate_free_at(
        self,
        pipe: Pipeline,
        line: str,
        limit: "Limit",
        now: float,
        holders: list[Holder],
        alive_since: float,
    ) -> float | None:
        """None when the key's rate admits a call now; else when its window frees (Redis
        TIME; keyclaim.decision.rate_free_at). The window is watched: two claims cannot both
        take its last place."""
        if limit.rate is None:
            return None
        admitted = self._k("admitted", line)
        pipe.watch(admitted)
        since = f"({now - limit.window}"  # exclusive: as SQLite's at > now - window
        found = pipe.zrangebyscore(admitted, since, "+inf", withscores=True)
        entries = [(member.decode().rpartition("@")[0], at) for member, at in found]
        return rate_free_at(entries, holders, alive_since, limit.rate, limit.window, now)

    def _index(self, pipe: Pipeline, invocation: "DistributedInvocation") -> None:
        task_key = invocation.task.task_id.key
        for arg, value in invocation.call.serialized_arguments.items():
            pipe.sadd(self.key.args(task_key, arg, value), invocation.invocation_id)

    def _read_status(self, pipe: Pipeline, invocation_id: str) -> InvocationStatusRecord | None:
        raw = pipe.get(self.key.invocation_to_status(invocation_id))
        return InvocationStatusRecord.from_json(json.loads(raw)) if raw else None

    def _write_status(
        self, pipe: Pipeline, invocation_id: str, old: InvocationStatus, new: InvocationStatusRecord
    ) -> None:
        pipe.srem(self.key.status_to_invocations(old), invocation_id)
        pipe.sadd(self.key.status_to_invocations(new.status), invocation_id)
        pipe.set(self.key.invocation_to_status(invocation_id), json.dumps(new.to_json()))

    def view_keys(self) -> dict[str, Any]:
        """The keys that hold or wait, for `python -m keyclaim top`: read from the claim's set
        of holders and what it indexes (a key's line waits only while the key has holders), in
        four round trips whose commands grow with the busy keys alone, never with the keys ever
        seen (no SCAN); no write. Not one snapshot: each read is the store's own."""
        reads = {"commands": 0}
        status_of, call_of = self.key.invocation_to_status, self.key.invocation_to_call

        def run(fill: Callable[[Pipeline], Any]) -> list[Any]:
            with self.client.pipeline(transaction=False) as pipe:
                fill(pipe)
                reads["commands"] += len(pipe)
                return pipe.execute()

        now_raw, members = run(lambda p: p.time().smembers(self._k("holders")))
        now, ids = seconds_of(now_raw), sorted(m.decode() for m in members)

        def per_holder(p: Pipeline) -> None:
            for name in (lambda i: self._k("holds", i), lambda i: self._k("slot", i), status_of):
                p.mget([name(i) for i in ids])
            p.mget([call_of(i) for i in ids])
            p.hmget(self._k("fences"), ids).hmget(self._k("claimed_at"), ids)
            p.zmscore(self._k("dues"), ids)

        keys: dict[str, dict[str, Any]] = {}
        for inv_id, line, slot, raw, call, token, at, due in zip(
            ids, *(run(per_holder) if ids else [[]] * 7), strict=True
        ):
            if line is None:  # let go of meanwhile
                continue
            record = InvocationStatusRecord.from_json(json.loads(raw)) if raw else None
            empty = {"holders": [], "waiting": 0, "oldest_wait": None, "admitted": []}
            keys.setdefault(line.decode(), empty)["holders"].append(
                {
                    "slot": int(slot or 0),
                    "invocation": inv_id,
                    "task": call and call.decode().rsplit(":", 1)[0],
                    "status": record and record.status.value,
                    "runner": record and record.runner_id,
                    "token": token and int(token),
                    "held_for": at and round(now - float(at), 3),
                    "due_in": due and round(max(0.0, due - now), 3),
                }
            )
        lines = sorted(keys)

        def per_line(p: Pipeline) -> None:
            for line in lines:
                p.llen(self._k("line", line)).lindex(self._k("line", line), 0)
                p.zrange(self._k("admitted", line), 0, -1, withscores=True)

        found = run(per_line)
        heads = [head for head in found[1::3] if head]
        stamps = iter(
            run(lambda p: p.mget([status_of(h.decode()) for h in heads]))[0] if heads else []
        )
        for line, waiting, head, admitted in zip(
            lines, found[::3], found[1::3], found[2::3], strict=True
        ):
            keys[line].update(waiting=waiting, admitted=[now - at for _, at in admitted])
            if head and (raw := next(stamps)):
                stamp = InvocationStatusRecord.from_json(json.loads(raw)).timestamp.timestamp()
                keys[line]["oldest_wait"] = round(time.time() - stamp, 3)
        return {"keys": keys, "reads": reads}
