"""The provider's rules and books: each account's calls, judged as they arrive, and held.

A call is judged by its fencing token (stand_in/fences.py: fenced, an older claim's call), its
Idempotency-Key (replayed from the store; 409 while its first call is in flight; 422 if first
sent for another call), the account's rate (throttled, a 429), then its slots (a collision:
more in flight than its quota). Only a call that passes all four is applied, and held; each
other kind is counted on its own line, against no quota. An account's quota may change
mid-run (`Books.set_quota`): each call is judged against the quota in force as it arrives,
and each quota's peak in flight is kept beside it (`QuotaSpan`).
"""

import asyncio
import time
from collections import defaultdict
from dataclasses import dataclass, field

from fastapi import HTTPException

from demo.scenarios import HOLD_SECONDS
from stand_in import fences

# A token is a 53-bit integer (a JSON number any client reads exactly). The claim's tokens start
# from the time in microseconds, which stays below it until the year 2255.
MAX_TOKEN = 2**53
MAX_SLOTS = 1000  # calls per account in flight, and slot numbers: more is a mistake
MAX_HOLD_SECONDS = 30.0  # a call's hold, and the longest a paused call stays in flight
# The accounts whose calls stay in flight past their hold (None: every account's): named only
# by stand_in/held.py's /pause, which the tests and the fault harness serve.
paused: set[str | None] = set()
PAUSE_POLL_SECONDS = 0.01


@dataclass
class Call:
    account_id: str
    op: str
    start: float
    end: float | None = None
    collided: bool = False
    token: int | None = None
    slot: int = 0  # which of the account's slots its token belongs to
    fenced: bool = False  # refused by its token: a newer one for its slot came first, or meanwhile
    throttled: bool = False  # refused as beyond the account's rate (a 429): not applied
    key: str | None = None  # its Idempotency-Key, if it sent one
    replayed: bool = False  # its key's call had been applied: answered from the store
    conflict: bool = False  # its key's first call was still in flight: 409, not applied

    @property
    def applied(self) -> bool:
        return not (self.fenced or self.throttled or self.replayed or self.conflict)

    @property
    def outcome(self) -> str:  # an applied call's, as it ends
        return "fenced" if self.fenced else "collision" if self.collided else "ok"

    @property
    def mark(self) -> str:  # in the provider's log: the first that holds, 9 wide
        marks = {"FENCED": self.fenced, "THROTTLED": self.throttled, "REPLAYED": self.replayed}
        marks |= {"CONFLICT": self.conflict, "COLLISION": self.collided, "ok": True}
        return f"{next(mark for mark, holds in marks.items() if holds):<9}"

    @property
    def note(self) -> str:  # its token in the provider's log, and its slot unless 0
        if self.token is None:
            return ""
        return f" (token {self.token}" + (f", slot {self.slot})" if self.slot else ")")


@dataclass
class Keyed:
    """One Idempotency-Key: what it was first sent for, and its call's fate so far."""

    account_id: str
    op: str
    holder: Call | None = None  # the call applying it now
    outcome: str | None = None  # once that call was applied: what a repeat gets back


@dataclass(frozen=True)
class Quota:
    """What each account may do, given at a reset: `slots` in flight, `rate` per `per` s."""

    slots: int = 1
    rate: int | None = None
    per: float = 1.0


@dataclass
class QuotaSpan:
    """One quota of an account, from `since` (seconds from the reset), and the most calls it
    had applied at once while in force (those still in flight as it began included)."""

    since: float
    slots: int
    peak: int = 0


@dataclass
class Account:
    calls: int = 0
    collisions: int = 0
    fenced: int = 0
    throttled: int = 0
    replayed: int = 0
    conflicts: int = 0
    peak_in_flight: int = 0  # the most calls applied at once (fenced ones not counted)
    live: list[Call] = field(default_factory=list)
    started: list[Call] = field(default_factory=list)  # calls let in, for the rate's window
    limits: list[QuotaSpan] = field(default_factory=list)  # its quotas over time, once set

    @property
    def in_flight(self) -> int:
        return len(self.live)

    def arrive(self, record: Call, quota: Quota, keyed: Keyed | None = None) -> None:
        """Count a call as it arrives, judged in the order the module's docstring gives."""
        self.calls += 1
        if record.token is not None:
            if not fences.admit(record.account_id, record.slot, record.token):
                record.fenced = True  # late: a newer claim of this slot came first
                self.fenced += 1
                return
            # A newer claim of the slot starts: its older calls lose.
            for older in [c for c in self.live if c.slot == record.slot and not c.fenced]:
                if older.token is not None and older.token < record.token:
                    older.fenced = True
                    self.fenced += 1
        if keyed is not None:
            if keyed.outcome is not None:  # applied once already: answered from the store
                record.replayed = True
                self.replayed += 1
                return
            if keyed.holder is not None and not keyed.holder.fenced:  # still in flight
                record.conflict = True
                self.conflicts += 1
                return
        if quota.rate is not None:
            since = record.start - quota.per
            recent = [c for c in self.started if not c.fenced and c.start > since]
            if len(recent) >= quota.rate:
                record.throttled = True
                self.throttled += 1
                return
            self.started = recent
        if keyed is not None:
            keyed.holder = record  # the first, or the first since its holder was fenced
        applied = [other for other in self.live if not other.fenced]
        record.collided = len(applied) >= quota.slots
        self.collisions += int(record.collided)
        self.live.append(record)
        if quota.rate is not None:
            self.started.append(record)
        self.peak_in_flight = max(self.peak_in_flight, len(applied) + 1)
        if self.limits:
            self.limits[-1].peak = max(self.limits[-1].peak, len(applied) + 1)


@dataclass
class Books:
    """Everything the provider remembers since the last reset."""

    hold: float = HOLD_SECONDS
    label: str = ""
    quota: Quota = field(default_factory=Quota)
    started: float = field(default_factory=time.monotonic)
    accounts: dict[str, Account] = field(default_factory=lambda: defaultdict(Account))
    calls: list[Call] = field(default_factory=list)
    keys: dict[str, Keyed] = field(default_factory=dict)
    quotas: dict[str, Quota] = field(default_factory=dict)  # accounts' own, set mid-run

    def set_quota(self, account_id: str, quota: Quota) -> None:
        """The account's quota from now on; the calls in flight stay, and count in its peak."""
        account, now = self.accounts[account_id], time.monotonic() - self.started
        if not account.limits and account.calls:  # the quota it had until now
            was = self.quota_of(account_id).slots
            account.limits.append(QuotaSpan(0.0, was, account.peak_in_flight))
        self.quotas[account_id] = quota
        in_flight = sum(1 for c in account.live if not c.fenced)
        account.limits.append(QuotaSpan(now, quota.slots, in_flight))

    def quota_of(self, account_id: str) -> Quota:
        return self.quotas.get(account_id, self.quota)

    def judge(
        self, account_id: str, op: str, token: int | None, slot: int, key: str | None
    ) -> Call:
        """The call, judged and counted; a 422, counting nothing, for a key first sent with
        another account or op."""
        keyed = None if key is None else self.keys.setdefault(key, Keyed(account_id, op))
        if keyed is not None and (keyed.account_id, keyed.op) != (account_id, op):
            first = f"Idempotency-Key {key!r} was first sent with {keyed.account_id}/{keyed.op}"
            raise HTTPException(422, f"{first}, not {account_id}/{op}")
        start = time.monotonic() - self.started
        record = Call(account_id, op, start, token=token, slot=slot, key=key)
        self.accounts[account_id].arrive(record, self.quota_of(account_id), keyed)
        self.calls.append(record)
        return record

    def answer(self, record: Call) -> dict[str, str]:
        """What a call not applied gets at once: nothing was held. A 409 while its key's first
        call is in flight."""
        record.end = record.start
        if record.conflict:
            raise HTTPException(409, f"Idempotency-Key {record.key!r}: its first call is in flight")
        if record.replayed and record.key is not None:
            return {"outcome": self.keys[record.key].outcome or ""}
        return {"outcome": "fenced" if record.fenced else "throttled"}

    def release(self, record: Call) -> None:
        """An applied call ends. Its key keeps its outcome for the repeats, unless it was fenced:
        not applied, it stores nothing, and its key is free again."""
        self.accounts[record.account_id].live.remove(record)
        record.end = time.monotonic() - self.started
        keyed = None if record.key is None else self.keys[record.key]
        if keyed is not None and keyed.holder is record:
            keyed.holder, keyed.outcome = None, None if record.fenced else record.outcome


async def hold(seconds: float, account_id: str) -> None:
    """An applied call's hold, then as long as a pause names its account, up to a deadline."""
    await asyncio.sleep(seconds)
    deadline = time.monotonic() + MAX_HOLD_SECONDS
    while paused & {None, account_id} and time.monotonic() < deadline:
        await asyncio.sleep(PAUSE_POLL_SECONDS)
