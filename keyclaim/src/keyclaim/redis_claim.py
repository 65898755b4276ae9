"""The claim on Redis: every step WATCHes what it reads, then writes in MULTI/EXEC.

Selected by class name (orchestrator_cls="AtomicClaimRedisOrchestrator"): keyclaim.install.
Written and tested against pynenc 0.3.1 with pynenc-redis 0.3.0 (keyclaim.versions); pynenc-redis
0.3.0 cannot be built under pynenc 0.4.0. Its keys sit under the app's pynenc key prefix.
Liveness and a key's first token are read on the store's own clock (Redis TIME), the same for
workers on every host.

The upstream change that retires it: the same steps in pynenc-redis's `RedisOrchestrator`, its
status transition watched (0.3.0 reads, then writes without WATCH), and the hand-over in the
same MULTI (the repo's docs/upstream.md).
"""

import json
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pynenc.exceptions import InvocationStatusError
from pynenc.invocation.status import (
    InvocationStatus,
    InvocationStatusRecord,
    status_record_transition,
)
from pynenc_redis.orchestrator import RedisOrchestrator
from redis.client import Pipeline
from redis.exceptions import WatchError

from keyclaim import limits
from keyclaim.clock import first_token
from keyclaim.decision import UNMOVING, Decision, Holder, Verdict, free_slot, recovery
from keyclaim.keys import fence_key, key_arguments, line_key, waits_in_line
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


def _seconds(redis_time: tuple[int, int]) -> float:
    """Redis TIME (seconds, microseconds) as seconds."""
    return redis_time[0] + redis_time[1] / 1_000_000


class AtomicClaimRedisOrchestrator(AtomicClaim, RedisOrchestrator):
    """Redis: every step WATCHes what it reads (the invocation's status, the key's holders
    and line, the holders' statuses, its rate window, the slot's token counter), then writes
    in MULTI/EXEC.

    A concurrent write to any of them fails the EXEC, and the whole read-decide-write is
    tried again on fresh data: the check and the write are one step. The tries are bounded
    and spaced out; a claim that still cannot get through goes back on the queue.
    """

    BACKEND = "redis"
    attempts = REDIS_ATTEMPTS

    def _transaction[T](
        self, step: Callable[["Pipeline"], T], *watched: str
    ) -> tuple[T | None, int]:
        """step(pipe) under WATCH, then EXEC; again on a WatchError, after a growing pause.

        step may WATCH more keys once it knows them. Returns step's value and how many
        tries failed; (None, attempts) when none got through.
        """
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

    def claim_in_store(
        self,
        invocation: "DistributedInvocation",
        runner_id: str,
        dead_after: float,
        busy: Verdict,
    ) -> Decision:
        inv_id = invocation.invocation_id
        key = key_arguments(invocation)
        line = None if key is None else line_key(invocation, key)

        limit = limits.of(invocation)

        def step(pipe: Pipeline) -> Decision:
            current = self._read_status(pipe, inv_id)
            if current is None:
                return Decision(Verdict.SKIP)
            holders = [] if line is None else self._holders(pipe, line)
            now = _seconds(pipe.time())
            free_at = None if line is None else self._rate_free_at(pipe, line, limit, now)
            alive_since = now - dead_after
            decision = self.decide(
                invocation, current, holders, runner_id, alive_since, busy, free_at
            )
            issued = None
            if line is not None and decision.verdict is Verdict.RUN:
                counter = self._k("fence", fence_key(line, decision.slot))
                pipe.watch(counter)
                last = pipe.get(counter)
                issued = first_token(now) if last is None else int(last) + 1
            pipe.multi()
            previous = {inv_id: current.status}
            previous.update({h.invocation_id: h.record.status for h in holders})
            for invocation_id, record in decision.writes:
                self._write_status(pipe, invocation_id, previous[invocation_id], record)
                previous[invocation_id] = record.status
            for recovered in decision.recovered:
                pipe.rpush(self.app.broker.key.default_queue(), recovered)
            if key is not None and line is not None:
                if decision.verdict in (Verdict.RUN, Verdict.WAIT) and decision.takes_key:
                    self._hold(pipe, line, decision.slot, inv_id)
                if decision.verdict is Verdict.RUN:
                    self._index(pipe, invocation)
                    pipe.set(self._k("fence", fence_key(line, decision.slot)), issued)
                    pipe.hset(self._k("fences"), inv_id, issued)
                    pipe.hset(self._k("claimed_at"), inv_id, now)
                    pipe.zrem(self._k("dues"), inv_id)
                    if limit.rate is not None:
                        admitted = self._k("admitted", line)
                        pipe.zremrangebyscore(admitted, "-inf", now - limit.window)
                        pipe.zadd(admitted, {f"{inv_id}@{now}": now})
                        pipe.expire(admitted, int(limit.window) + 60)
                    decision.token = issued
                elif decision.verdict is Verdict.WAIT and decision.due is not None:
                    pipe.zadd(self._k("dues"), {inv_id: decision.due})
                    decision.due_in = decision.due - now
                elif decision.verdict is Verdict.PARK:
                    pipe.rpush(self._k("line", line), inv_id)
                    pipe.set(self._k("parked", inv_id), line)
            return decision

        decision, failed = self._transaction(step, self.key.invocation_to_status(inv_id))
        with self.client.pipeline(transaction=False) as pipe:
            pipe.hincrby(self._k("claim_stats"), "claims", 1)
            pipe.hincrby(self._k("claim_stats"), f"claims of {invocation.task.task_id.key}", 1)
            pipe.hincrby(self._k("claim_stats"), "retries", failed)
            pipe.execute()
        if decision is None:
            self.app.logger.warning(
                f"invocation:{inv_id} back to the queue, unclaimed: what it watched "
                f"changed on all {failed} tries"
            )
            return Decision(Verdict.REQUEUE)
        return decision

    def admit_in_store(self, invocation: "DistributedInvocation") -> bool:
        key = key_arguments(invocation)
        assert key is not None
        line, inv_id = line_key(invocation, key), invocation.invocation_id

        def step(pipe: Pipeline) -> bool:
            holders = self._holders(pipe, line) if waits_in_line(invocation) else []
            queued = self.admits(invocation, holders)
            pipe.multi()
            self._index(pipe, invocation)
            if queued and waits_in_line(invocation):
                slot = free_slot(holders, limits.of(invocation).slots)
                self._hold(pipe, line, slot, inv_id)
            if queued:
                pipe.rpush(self.app.broker.key.default_queue(), inv_id)
            else:
                pipe.rpush(self._k("line", line), inv_id)
                pipe.set(self._k("parked", inv_id), line)
            return queued

        queued, failed = self._transaction(step)
        if queued is None:
            raise StatusContention(f"invocation:{inv_id} not admitted in {failed} tries")
        return queued

    def _atomic_status_transition(
        self, invocation_id: str, status: InvocationStatus, runner_id: str | None = None
    ) -> InvocationStatusRecord:
        """pynenc-redis 0.3.0 reads, then writes without WATCH: here the read is watched,
        and a final status hands the key on in the same MULTI."""

        def step(pipe: Pipeline) -> InvocationStatusRecord:
            current = self._read_status(pipe, invocation_id)
            if current is None:
                raise KeyError(f"Invocation status {invocation_id} not found in Redis")
            new = status_record_transition(current, status, runner_id)
            release = self._plan_release(pipe, invocation_id) if new.status.is_final() else []
            pipe.multi()
            self._write_status(pipe, invocation_id, current.status, new)
            for write in release:
                write(pipe)
            return new

        new, failed = self._transaction(step, self.key.invocation_to_status(invocation_id))
        if new is None:
            raise StatusContention(f"invocation:{invocation_id} changed on all {failed} tries")
        if new.status.is_final():  # a next call of the key may be on the queue now
            self.wake_now()
        return new

    def recover_in_store(
        self, invocation_id: str, runner_id: str, dead_after: float, max_pending: float
    ) -> list[InvocationStatusRecord]:
        def step(pipe: Pipeline) -> list[InvocationStatusRecord]:
            record = self._read_status(pipe, invocation_id)
            if record is None:
                return []
            now = _seconds(pipe.time())
            if record.status is S.PENDING:
                claimed = pipe.hget(self._k("claimed_at"), invocation_id)
                lost = (
                    record.timestamp.timestamp() < time.time() - max_pending
                    if claimed is None
                    else float(claimed) < now - max_pending
                )
            else:
                beat = pipe.hget(self._k("beats"), record.runner_id or "")
                lost = record.status is S.RUNNING and (
                    beat is not None and float(beat) < now - dead_after  # none: see Holder
                )
            if not lost:
                return []
            records = recovery(record, runner_id)
            pipe.multi()
            self._write_status(pipe, invocation_id, record.status, records[0])
            self._write_status(pipe, invocation_id, records[0].status, records[1])
            pipe.rpush(self.app.broker.key.default_queue(), invocation_id)
            return records

        records, _ = self._transaction(step, self.key.invocation_to_status(invocation_id))
        return records or []

    def holders_to_heal(self) -> tuple[list[str], list[str]]:
        ids = [m.decode() for m in self.client.smembers(self._k("holders"))]
        with self.client.pipeline(transaction=False) as pipe:
            for invocation_id in ids:
                pipe.get(self.key.invocation_to_status(invocation_id))
                pipe.lpos(self.app.broker.key.default_queue(), invocation_id)
                pipe.zscore(self._k("dues"), invocation_id)
            found = pipe.execute()
        ended_or_stuck, unqueued = [], []
        rows = zip(ids, found[::3], found[1::3], found[2::3], strict=True)
        for invocation_id, raw, position, due in rows:
            status = InvocationStatusRecord.from_json(json.loads(raw)).status if raw else None
            if status is None or status in UNMOVING:
                ended_or_stuck.append(invocation_id)
            elif status.is_available_for_run() and position is None and due is None:
                # (One with a due time waits for its rate window, off the queue on purpose.)
                unqueued.append(invocation_id)
        return ended_or_stuck, unqueued

    def heal_in_store(
        self, invocation_id: str, runner_id: str, stuck: bool, requeue: bool
    ) -> list[InvocationStatusRecord]:
        queue = self.app.broker.key.default_queue()

        def step(pipe: Pipeline) -> list[InvocationStatusRecord]:
            pipe.watch(self._k("holds", invocation_id))
            if pipe.get(self._k("holds", invocation_id)) is None:
                return []  # healed meanwhile
            record = self._read_status(pipe, invocation_id)
            if record is None or record.status.is_final():
                writes = self._plan_release(pipe, invocation_id)
                pipe.multi()
                for write in writes:
                    write(pipe)
                return []
            if record.status in UNMOVING and stuck:
                rerouted = status_record_transition(record, S.REROUTED, runner_id)
                pipe.multi()
                self._write_status(pipe, invocation_id, record.status, rerouted)
                pipe.rpush(queue, invocation_id)
                return [rerouted]
            available = requeue and record.status.is_available_for_run()
            if available and pipe.lpos(queue, invocation_id) is None:
                pipe.multi()
                pipe.rpush(queue, invocation_id)
            return []

        healed, _ = self._transaction(step, self.key.invocation_to_status(invocation_id))
        return healed or []

    def _hold(self, pipe: Pipeline, line: str, slot: int, invocation_id: str) -> None:
        """Write (inside MULTI) that the invocation holds this slot of the key."""
        pipe.hset(self._k("slots", line), str(slot), invocation_id)
        pipe.set(self._k("holds", invocation_id), line)
        pipe.set(self._k("slot", invocation_id), slot)
        pipe.sadd(self._k("holders"), invocation_id)

    def _plan_release(self, pipe: Pipeline, invocation_id: str) -> list[Callable[[Pipeline], Any]]:
        """Read (watched) what a final invocation lets go of; return the writes to do so: its
        slot goes to the head of its line, or its place in a line is given up."""
        holds, parked = self._k("holds", invocation_id), self._k("parked", invocation_id)
        slot_key, dues = self._k("slot", invocation_id), self._k("dues")
        pipe.watch(holds, parked, slot_key)
        if (line := pipe.get(holds)) is None:
            if (waiting_in := pipe.get(parked)) is None:
                return [lambda p: p.zrem(dues, invocation_id)]
            waiting = self._k("line", waiting_in.decode())
            return [lambda p: p.lrem(waiting, 1, invocation_id), lambda p: p.delete(parked)]
        line = line.decode()
        slot = (pipe.get(slot_key) or b"0").decode()
        slots, queue = self._k("slots", line), self._k("line", line)
        pipe.watch(slots, queue)
        holders = self._k("holders")
        writes: list[Callable[[Pipeline], Any]] = [
            lambda p: p.delete(holds, slot_key),
            lambda p: p.srem(holders, invocation_id),
            lambda p: p.zrem(dues, invocation_id),
        ]
        head = pipe.lindex(queue, 0)
        if head is None:
            return [*writes, lambda p: p.hdel(slots, slot)]
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
        one lets go of its slot first."""
        slots_key = self._k("slots", line)
        pipe.watch(slots_key, self._k("line", line))
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

    def _rate_free_at(self, pipe: Pipeline, line: str, limit: "Limit", now: float) -> float | None:
        """None when the key's rate admits a call now; else when its window frees (Redis
        TIME). The window is watched: two claims cannot both take its last place."""
        if limit.rate is None:
            return None
        admitted = self._k("admitted", line)
        pipe.watch(admitted)
        since = f"({now - limit.window}"  # exclusive: as SQLite's at > now - window
        times = [t for _, t in pipe.zrangebyscore(admitted, since, "+inf", withscores=True)]
        return None if len(times) < limit.rate else times[len(times) - limit.rate] + limit.window

    def release_due_in_store(self) -> tuple[list[str], float | None]:
        dues, queue = self._k("dues"), self.app.broker.key.default_queue()
        if not self.client.zcard(dues):
            return [], None
        now = _seconds(self.client.time())
        released = []
        for raw in self.client.zrangebyscore(dues, "-inf", now):
            invocation_id = raw.decode()

            def step(pipe: Pipeline, invocation_id: str = invocation_id) -> bool:
                pipe.watch(self._k("holds", invocation_id), dues)
                if pipe.zscore(dues, invocation_id) is None:
                    return False  # released meanwhile
                record = self._read_status(pipe, invocation_id)
                holds = pipe.get(self._k("holds", invocation_id)) is not None
                available = record is not None and record.status.is_available_for_run()
                requeue = holds and available and pipe.lpos(queue, invocation_id) is None
                pipe.multi()
                pipe.zrem(dues, invocation_id)
                if requeue:
                    pipe.rpush(queue, invocation_id)
                return requeue

            status_key = self.key.invocation_to_status(invocation_id)
            if self._transaction(step, status_key)[0]:
                released.append(invocation_id)
        first = self.client.zrange(dues, 0, 0, withscores=True)
        return released, max(0.0, first[0][1] - now) if first else None

    def fence_slot(self, invocation_id: str) -> int | None:
        found = self.client.get(self._k("slot", invocation_id))
        return None if found is None else int(found)

    def beat_in_store(self, runner_ids: list[str]) -> None:
        if runner_ids:
            now = _seconds(self.client.time())
            self.client.hset(self._k("beats"), mapping=dict.fromkeys(runner_ids, now))

    def silent_runners(self, runner_ids: set[str], window: float, adopt: bool = False) -> set[str]:
        ordered = sorted(runner_ids)
        if not ordered:
            return set()
        now = _seconds(self.client.time())
        beats = dict(zip(ordered, self.client.hmget(self._k("beats"), ordered), strict=True))
        unseen = {r for r, b in beats.items() if b is None}
        if adopt and unseen:
            with self.client.pipeline(transaction=False) as pipe:
                for runner_id in unseen:
                    pipe.hsetnx(self._k("beats"), runner_id, now)  # a first beat, see above
                pipe.execute()
        stale = {r for r, b in beats.items() if b is not None and float(b) < now - window}
        return stale if adopt else stale | unseen

    def pending_too_long(self, window: float) -> list[str]:
        pending = sorted(
            m.decode() for m in self.client.smembers(self.key.status_to_invocations(S.PENDING))
        )
        if not pending:
            return []
        since = _seconds(self.client.time()) - window
        claimed = self.client.hmget(self._k("claimed_at"), pending)
        too_long = []
        for invocation_id, at in zip(pending, claimed, strict=True):
            if at is None:  # not claimed by us: pynenc's own timestamp
                stamp = self._record_of(invocation_id).timestamp.timestamp()
                if stamp < time.time() - window:
                    too_long.append(invocation_id)
            elif float(at) < since:
                too_long.append(invocation_id)
        return too_long

    def _index(self, pipe: Pipeline, invocation: "DistributedInvocation") -> None:
        task_key = invocation.task.task_id.key
        for arg, value in invocation.call.serialized_arguments.items():
            pipe.sadd(self.key.args(task_key, arg, value), invocation.invocation_id)

    def fence_token(self, invocation_id: str) -> int | None:
        issued = self.client.hget(self._k("fences"), invocation_id)
        return None if issued is None else int(issued)

    def claim_counts(self, task: str | None = None) -> dict[str, int]:
        """Claims made so far (of one task's invocations, given its key), and how many of
        their tries a WATCH conflict sent back (all tasks')."""
        raw = self.client.hgetall(self._k("claim_stats"))
        counts = {k.decode(): int(v) for k, v in raw.items()}
        claims = counts.get("claims" if task is None else f"claims of {task}", 0)
        return {"claims": claims, "retries": counts.get("retries", 0)}

    def waiting(self) -> int:
        """Calls parked in a line right now, all keys together."""
        return sum(1 for _ in self.client.scan_iter(self._k("parked", "*"), count=1000))

    def _read_status(self, pipe: Pipeline, invocation_id: str) -> InvocationStatusRecord | None:
        raw = pipe.get(self.key.invocation_to_status(invocation_id))
        return InvocationStatusRecord.from_json(json.loads(raw)) if raw else None

    def _write_status(
        self,
        pipe: Pipeline,
        invocation_id: str,
        old: InvocationStatus,
        new: InvocationStatusRecord,
    ) -> None:
        pipe.srem(self.key.status_to_invocations(old), invocation_id)
        pipe.sadd(self.key.status_to_invocations(new.status), invocation_id)
        pipe.set(self.key.invocation_to_status(invocation_id), json.dumps(new.to_json()))
