"""The provider's books: each account's calls, judged as they arrive, and who owns the provider.

A call is judged in this order (api_server.py serves them): its fencing token, against the
newest its account's slot has seen (fenced: an older claim's call); its Idempotency-Key
(replayed: applied before, answered from the store; a conflict, 409: its first call still in
flight); the account's rate (throttled: a 429); the account's slots (a collision: more in
flight than its quota). Only a call that passes all four is applied; each other kind is
counted on its own line, and none of them counts against a quota.
"""

import time
from collections import defaultdict
from dataclasses import dataclass, field

from demo.scenarios import HOLD_SECONDS


class KeyReused(ValueError):
    """An Idempotency-Key first sent with another account or op (the draft's 422)."""


@dataclass
class Call:
    account_id: str
    op: str
    start: float
    end: float | None = None
    collided: bool = False
    token: int | None = None
    slot: int = 0  # which of the account's slots its token belongs to
    # Refused by its fencing token: a newer token for its slot came first, or meanwhile.
    fenced: bool = False
    # Refused as beyond the account's rate (a 429): not applied, not in flight.
    throttled: bool = False
    key: str | None = None  # its Idempotency-Key, if it sent one
    replayed: bool = False  # its key's call had been applied: answered from the store
    conflict: bool = False  # its key's first call was still in flight: 409, not applied

    @property
    def applied(self) -> bool:
        return not (self.fenced or self.throttled or self.replayed or self.conflict)


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
class Account:
    calls: int = 0
    collisions: int = 0
    fenced: int = 0
    throttled: int = 0
    replayed: int = 0
    conflicts: int = 0
    peak_in_flight: int = 0  # the most calls applied at once (fenced ones not counted)
    newest: dict[int, int] = field(default_factory=dict)  # the newest token seen, per slot
    live: list[Call] = field(default_factory=list)
    started: list[Call] = field(default_factory=list)  # calls let in, for the rate's window

    @property
    def in_flight(self) -> int:
        return len(self.live)

    def arrive(self, record: Call, quota: Quota, keyed: Keyed | None = None) -> None:
        """Count a call as it arrives: fenced if its token is stale for its slot; replayed or a
        conflict if its key's call was applied or is in flight; throttled if the rate is spent;
        a collision if the account already has its quota in flight."""
        self.calls += 1
        if record.token is not None:
            newest = self.newest.get(record.slot)
            if newest is not None and record.token < newest:
                record.fenced = True  # late: a newer claim of this slot came first
                self.fenced += 1
                return
            self.newest[record.slot] = record.token
            for older in self.live:  # a newer claim of the slot starts: its older calls lose
                if (
                    older.slot == record.slot
                    and older.token is not None
                    and older.token < record.token
                    and not older.fenced
                ):
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


@dataclass
class Owner:
    """The run that owns the provider: only its resets count until it ends or goes stale."""

    run_id: str
    label: str
    began: str  # wall clock, for the person refused
    lease: float  # seconds each of its resets keeps the provider for it
    expires: float  # time.monotonic(): past it, a crashed run no longer holds the provider

    def describe(self) -> str:
        left = max(0.0, self.expires - time.monotonic())
        return f"{self.label!r}, started at {self.began} (stale in {left:.0f}s if it has died)"


@dataclass
class ProviderState:
    """Everything the provider remembers since the last reset."""

    hold: float = HOLD_SECONDS
    label: str = ""
    quota: Quota = field(default_factory=Quota)
    started: float = field(default_factory=time.monotonic)
    accounts: dict[str, Account] = field(default_factory=lambda: defaultdict(Account))
    calls: list[Call] = field(default_factory=list)
    keys: dict[str, Keyed] = field(default_factory=dict)

    def keyed(self, key: str | None, account_id: str, op: str) -> Keyed | None:
        """The key's record, made at its first call; KeyReused (a 422) if it was first sent for
        another call."""
        if key is None:
            return None
        keyed = self.keys.setdefault(key, Keyed(account_id, op))
        if (keyed.account_id, keyed.op) != (account_id, op):
            raise KeyReused(
                f"Idempotency-Key {key!r} was first sent with {keyed.account_id}/{keyed.op}, "
                f"not {account_id}/{op}"
            )
        return keyed

    def fences(self) -> list[tuple[str, int, int]]:
        """The newest token of each account's slots: (account, slot, token)."""
        return [
            (n, slot, token) for n, a in self.accounts.items() for slot, token in a.newest.items()
        ]
