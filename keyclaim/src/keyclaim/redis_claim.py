"""The claim on Redis: every step WATCHes what it reads, then writes in MULTI/EXEC.

Selected by class name (orchestrator_cls="AtomicClaimRedisOrchestrator"): keyclaim.install.
Written and tested against pynenc 0.3.1 with pynenc-redis 0.3.0 (keyclaim.versions), which
cannot be built under pynenc 0.4.0. Its keys are keyclaim.redis_keys'; its clock, Redis TIME.
The upstream change that retires it: the same steps in pynenc-redis's `RedisOrchestrator`, its
status transition watched (0.3.0 writes without WATCH), and the hand-over in the same MULTI
(the repo's docs/upstream.md).
"""

import json
import time
from typing import TYPE_CHECKING

from pynenc.invocation.status import (
    InvocationStatus,
    InvocationStatusRecord,
    status_record_transition,
)
from redis.client import Pipeline

from keyclaim import limits, overrides
from keyclaim.clock import first_token
from keyclaim.decision import UNMOVING, Decision, Verdict, free_slot, recovery
from keyclaim.keys import fence_key, key_arguments, line_key, waits_in_line
from keyclaim.redis_keys import RedisClaimKeys, StatusContention, seconds_of

if TYPE_CHECKING:
    from pynenc.invocation.dist_invocation import DistributedInvocation


S = InvocationStatus


class AtomicClaimRedisOrchestrator(RedisClaimKeys):
    """Redis: each step WATCHes the statuses, holders, line, rate window and token counter it
    reads, and is tried again on fresh data while a write beats it (keyclaim.redis_keys)."""

    BACKEND = "redis"

    def claim_in_store(
        self, invocation: "DistributedInvocation", runner_id: str, dead_after: float, busy: Verdict
    ) -> Decision:
        inv_id, key = invocation.invocation_id, key_arguments(invocation)
        line = None if key is None else line_key(invocation, key)

        def step(pipe: Pipeline) -> Decision:
            current = self._read_status(pipe, inv_id)
            if current is None:
                return Decision(Verdict.SKIP)
            limit = limits.of(invocation)
            if line is not None:  # the key's override, read (watched) in this step
                limit = overrides.redis_limit(self, pipe, invocation, line)
            holders = [] if line is None else self._holders(pipe, line)
            now = seconds_of(pipe.time())
            alive_since = now - dead_after
            free_at = None
            if line is not None:
                free_at = self._rate_free_at(pipe, line, limit, now, holders, alive_since)
            decision = self.decide(
                invocation, current, holders, runner_id, alive_since, busy, free_at
            )
            issued = None
            if line is not None and decision.verdict is Verdict.RUN:
                counter = self._k("fence", fence_key(line, decision.slot))
                # The floor, unwatched: every key's last release raises it, and watching it made
                # claims of unrelated keys conflict. It only grows, and an idle slot's counter was
                # folded into it in the MULTI that deleted the counter, so any floor read after
                # finding the counter gone is at least this slot's last token.
                pipe.watch(counter)
                if (last := pipe.get(counter)) is None:  # an idle slot: above the floor
                    floor = int(pipe.get(self._k("fence_floor")) or 0)
                    issued = max(first_token(now), floor + 1)
                else:
                    issued = int(last) + 1
            # Parked already (a lowered limit gave its slot back: at the head): it keeps its
            # place. Unwatched, as the line is: whatever takes it out also changes the key's
            # slots, which are watched.
            in_line = False
            if line is not None and decision.verdict is Verdict.PARK:
                in_line = pipe.lpos(self._k("line", line), inv_id) is not None
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
                    pipe.set(counter, issued)
                    pipe.hset(self._k("fences"), inv_id, issued)
                    pipe.hset(self._k("claimed_at"), inv_id, now)
                    pipe.zrem(self._k("dues"), inv_id)
                    if limit.rate is not None:
                        admitted = self._k("admitted", line)
                        pipe.zremrangebyscore(admitted, "-inf", now - limit.window)
                        pipe.zadd(admitted, {f"{inv_id}@{now}": now})
                        pipe.expire(admitted, int(limit.window) + 60)
                        decision.admitted = (admitted, f"{inv_id}@{now}", limit.window)
                    decision.token = issued
                elif decision.verdict is Verdict.WAIT and decision.due is not None:
                    pipe.zadd(self._k("dues"), {inv_id: decision.due})
                    decision.due_in = decision.due - now
                elif decision.verdict is Verdict.PARK:
                    if not in_line:
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
            limit = overrides.redis_limit(self, pipe, invocation, line)
            queued = self.admits(invocation, holders)
            merge = limits.of(invocation).merge if queued else 0.0  # open to merging, then due
            due = seconds_of(pipe.time()) + merge if merge else None  # (holders: watched)
            pipe.multi()
            self._index(pipe, invocation)
            if queued and waits_in_line(invocation):
                slot = free_slot(holders, limit.slots)
                self._hold(pipe, line, slot, inv_id)
            if due is not None:
                pipe.zadd(self._k("dues"), {inv_id: due})
            elif queued:
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

    def restamp_in_store(self, invocation_id: str, admitted: tuple[str, str, float]) -> None:
        window, member, seconds = admitted  # added again if pruned before its call started
        with self.client.pipeline() as pipe:
            pipe.zadd(window, {member: seconds_of(self.client.time())})
            pipe.expire(window, int(seconds) + 60)
            pipe.execute()

    def recover_in_store(
        self, invocation_id: str, runner_id: str, dead_after: float, max_pending: float
    ) -> list[InvocationStatusRecord]:
        def step(pipe: Pipeline) -> list[InvocationStatusRecord]:
            record = self._read_status(pipe, invocation_id)
            if record is None:
                return []
            now, lost = seconds_of(pipe.time()), False
            if record.status is S.PENDING:
                claimed = pipe.hget(self._k("claimed_at"), invocation_id)
                lost = (
                    record.timestamp.timestamp() < time.time() - max_pending
                    if claimed is None
                    else float(claimed) < now - max_pending
                )
            elif record.status is S.RUNNING:
                beat = pipe.hget(self._k("beats"), record.runner_id or "")
                lost = beat is not None and float(beat) < now - dead_after  # none: see Holder
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

    def release_due_in_store(self) -> tuple[list[str], float | None]:
        dues, queue = self._k("dues"), self.app.broker.key.default_queue()
        if not self.client.zcard(dues):
            return [], None
        now = seconds_of(self.client.time())
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

    def prune_in_store(self, silent_for: float) -> None:
        since, beats = seconds_of(self.client.time()) - silent_for, self._k("beats")
        if gone := [r for r, at in self.client.hgetall(beats).items() if float(at) < since]:
            self.client.hdel(beats, *gone)

    def beat_in_store(self, runner_ids: list[str]) -> None:
        if runner_ids:
            now = seconds_of(self.client.time())
            self.client.hset(self._k("beats"), mapping=dict.fromkeys(runner_ids, now))

    def silent_runners(self, runner_ids: set[str], window: float, adopt: bool = False) -> set[str]:
        ordered = sorted(runner_ids)
        if not ordered:
            return set()
        now = seconds_of(self.client.time())
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
        since = seconds_of(self.client.time()) - window
        claimed = self.client.hmget(self._k("claimed_at"), pending)

        def too_long(invocation_id: str, at: bytes | None) -> bool:
            if at is None:  # not claimed by us: pynenc's own timestamp
                return self._record_of(invocation_id).timestamp.timestamp() < time.time() - window
            return float(at) < since

        return [i for i, at in zip(pending, claimed, strict=True) if too_long(i, at)]

    def fence_token(self, invocation_id: str) -> int | None:
        issued = self.client.hget(self._k("fences"), invocation_id)
        return None if issued is None else int(issued)

    def claim_counts(self, task: str | None = None) -> dict[str, int]:
        # The retries: how many tries a WATCH conflict sent back, all tasks' together.
        raw = self.client.hgetall(self._k("claim_stats"))
        counts = {k.decode(): int(v) for k, v in raw.items()}
        claims = counts.get("claims" if task is None else f"claims of {task}", 0)
        return {"claims": claims, "retries": counts.get("retries", 0)}

    def waiting(self) -> int:
        return sum(1 for _ in self.client.scan_iter(self._k("parked", "*"), count=1000))
