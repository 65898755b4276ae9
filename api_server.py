"""The stand-in external provider: one call per account at a time, or it counts a collision.

Run it: uv run uvicorn api_server:app --port 8765

Each reset may give every account a quota instead (`?slots=N&rate=R&per=S`): a call that
arrives while N calls of its account are in flight is a collision (N = 1: the article's), and
one that arrives when R calls of its account started in the last S seconds is *throttled*: a
real API's 429, refused at once and not applied, on its own line.

A call may carry a fencing token (`?token=N`), as a real provider's conditional request
carries a version: the provider remembers the newest token it has seen for each account and
refuses the effect of any call with an older one. A late call is refused at once; a call still
in flight when a newer one starts is refused when it ends. Both are counted as *fenced*, on
their own line, never as collisions and never hidden, and a fenced call counts against neither
quota. With N calls per account, tokens are compared per slot (`&slot=k`, 0 by default): a
newer claim of slot 1 fences only older calls of slot 1, never slot 0's call in flight. The
newest tokens are kept in a small file beside the logs (DEMO_LOG_DIR/fences-PORT.json), so the
fence outlives a restart of the provider, as a real provider's would; a reset, which starts the
next scenario, clears it.

A call may also carry an `Idempotency-Key` header, as Stripe's API takes one, with the IETF
httpapi draft's semantics: the first call with a key is applied and its outcome stored; a later
one with the same key, account and op is not applied again but answered from the store
(*replayed*); one that arrives while the first is still in flight gets 409 (a *conflict*, not
applied); the same key with another account or op gets 422. The token is judged first: a call
it refuses is fenced, never replayed, and a fenced call stores no outcome and lets go of its
key, so the key's next call is applied. A replayed call or a 409 counts against neither quota.
A reset forgets the keys. A call without a key is counted as before.
"""

import asyncio
import json
import os
import secrets
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated

import fastapi
from fastapi import FastAPI, Header, HTTPException, Query, Request
from pydantic import BaseModel

from demo import settings
from demo.settings import HOLD_SECONDS, NAME_PATTERN

MAX_HOLD_SECONDS = 30.0
# Letters, digits and a few separators: no spaces, no control characters.
NAME = Annotated[str, fastapi.Path(min_length=1, max_length=64, pattern=NAME_PATTERN)]
# The header a call names its effect by (the task sends its invocation id); any visible ASCII.
IDEMPOTENCY_KEY = Annotated[
    str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255, pattern=r"^[!-~]+$")
]
# A token is a 53-bit integer (a JSON number any client reads exactly). The claim's tokens start
# from the time in microseconds, which stays below it until the year 2255.
MAX_TOKEN = 2**53
MAX_SLOTS = 1000  # calls per account in flight, and slot numbers: more is a mistake
# Where the fence is kept: one file per port the provider serves on (two providers beside one
# another keep theirs apart), known from the first request it serves.
fences_file: Path | None = None
LABEL_MAX = 200
CALL_SHAPE = "expected POST /call/{account_id}/{op}: both 1-64 characters of A-Za-z0-9_.:-"


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

    @property
    def newest_token(self) -> int | None:
        """Slot 0's newest token: with one call per account, the account's."""
        return self.newest.get(0)

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
        """The key's record, made at its first call; 422 if it was first sent for another call."""
        if key is None:
            return None
        keyed = self.keys.setdefault(key, Keyed(account_id, op))
        if (keyed.account_id, keyed.op) != (account_id, op):
            raise HTTPException(
                422,
                f"Idempotency-Key {key!r} was first sent with {keyed.account_id}/{keyed.op}, "
                f"not {account_id}/{op}",
            )
        return keyed

    def fences(self) -> dict[str, int]:
        """The newest token per account and slot: slot 0 under the account's name, as with one
        call per account; slot k under "name#k" (no name holds a '#')."""
        return {
            name if slot == 0 else f"{name}#{slot}": token
            for name, a in self.accounts.items()
            for slot, token in a.newest.items()
        }


def save_fences(fences: dict[str, int]) -> None:
    """Write the newest tokens, whole or not at all (a crash mid-write leaves the last ones)."""
    if fences_file is None:
        return
    fences_file.parent.mkdir(parents=True, exist_ok=True)
    partial = fences_file.with_suffix(".tmp")
    partial.write_text(json.dumps(fences))
    os.replace(partial, fences_file)


def restore_fences(request: Request) -> None:
    """At the first request a (re)started provider serves: the fences it had on this port."""
    global fences_file
    if fences_file is not None:
        return
    port = (request.scope.get("server") or ("", 0))[1]
    fences_file = Path(settings.get("DEMO_LOG_DIR")) / f"fences-{port}.json"
    try:
        fences = json.loads(fences_file.read_text())
    except (OSError, ValueError):
        fences = {}
    for kept, newest in fences.items() if isinstance(fences, dict) else ():
        name, _, slot = kept.partition("#")
        slot_no = int(slot) if slot.isdigit() else 0
        if isinstance(newest, int) and slot_no not in state.accounts[name].newest:
            state.accounts[name].newest[slot_no] = newest


app = FastAPI(title="Demo provider")
state = ProviderState()
# One lock around every read-modify-write of the counters: requests are truly concurrent.
lock = asyncio.Lock()
# Set by /pause: calls then stay inside their in-flight window until /resume; by
# /pause?account_id=..., only that account's calls do.
paused = False
paused_accounts: set[str] = set()
owner: Owner | None = None
PAUSE_POLL_SECONDS = 0.01


class CallAnswer(BaseModel):
    outcome: str


@app.post("/call/{account_id}/{op}")
async def call(
    request: Request,
    account_id: NAME,
    op: NAME,
    hold: Annotated[float | None, Query(ge=0, le=MAX_HOLD_SECONDS)] = None,
    token: Annotated[int | None, Query(ge=0, le=MAX_TOKEN)] = None,
    slot: Annotated[int, Query(ge=0, le=MAX_SLOTS)] = 0,
    key: IDEMPOTENCY_KEY = None,
) -> CallAnswer:
    async with lock:
        restore_fences(request)
        # The scenario this call belongs to, even if a /reset comes while it is in flight.
        current = state
        keyed = current.keyed(key, account_id, op)  # or 422
        acc = current.accounts[account_id]
        start = time.monotonic() - current.started
        record = Call(account_id, op, start, token=token, slot=slot, key=key)
        newest = dict(acc.newest)
        acc.arrive(record, current.quota, keyed)
        if acc.newest != newest and current is state:
            save_fences(current.fences())
        current.calls.append(record)
        seconds = current.hold if hold is None else hold
    print(f"  [{_mark(record)}] {account_id:<8} {op}{_token_note(record)}", flush=True)
    if not record.applied:  # refused or answered before it started: nothing is held
        record.end = record.start
        if record.conflict:
            raise HTTPException(409, f"Idempotency-Key {key!r}: its first call is in flight")
        if record.replayed and keyed is not None:
            return CallAnswer(outcome=keyed.outcome or "")
        return CallAnswer(outcome="fenced" if record.fenced else "throttled")
    try:
        await asyncio.sleep(seconds)
        # A paused provider keeps the call in flight, up to a deadline: it never hangs.
        deadline = time.monotonic() + MAX_HOLD_SECONDS
        while (paused or account_id in paused_accounts) and time.monotonic() < deadline:
            await asyncio.sleep(PAUSE_POLL_SECONDS)
    finally:
        async with lock:
            acc.live.remove(record)
            record.end = time.monotonic() - current.started
            outcome = "fenced" if record.fenced else "collision" if record.collided else "ok"
            if keyed is not None and keyed.holder is record:
                # A fenced call was not applied: it stores nothing, and its key is free again.
                keyed.holder, keyed.outcome = None, None if record.fenced else outcome
    if record.fenced:  # a newer claim started while this one was in flight: not applied
        print(f"  [{_mark(record)}] {account_id:<8} {op}{_token_note(record)}", flush=True)
    return CallAnswer(outcome=outcome)


def _mark(record: Call) -> str:
    if not record.applied:
        marks = ("FENCED   ", "THROTTLED", "REPLAYED ", "CONFLICT ")
        flags = (record.fenced, record.throttled, record.replayed, record.conflict)
        return next(mark for mark, flag in zip(marks, flags, strict=True) if flag)
    return "COLLISION" if record.collided else "ok       "


def _token_note(record: Call) -> str:
    if record.token is None:
        return ""
    return f" (token {record.token}" + (f", slot {record.slot})" if record.slot else ")")


@app.post("/call/{malformed:path}", status_code=422)
async def call_malformed(malformed: str) -> dict[str, str]:
    """Anything else under /call/ (an empty account id or op, extra parts): say what fits."""
    return {"detail": CALL_SHAPE}


def _owned_by_another(run_id: str | None) -> Owner | None:
    """The live run that owns the provider, unless it is run_id's."""
    if owner is None or owner.expires < time.monotonic() or owner.run_id == run_id:
        return None
    return owner


@app.post("/runs")
async def begin_run(
    label: Annotated[str, Query(max_length=LABEL_MAX)],
    lease: Annotated[float, Query(gt=0, le=3600)],
) -> dict[str, str]:
    """One run at a time: its resets, and nobody else's, until it ends or stays silent for
    `lease` seconds after its last reset (a crashed run)."""
    global owner
    async with lock:
        if other := _owned_by_another(None):
            raise HTTPException(409, f"another run uses this provider: {other.describe()}")
        began = datetime.now().strftime("%H:%M:%S")
        owner = Owner(secrets.token_hex(8), label, began, lease, time.monotonic() + lease)
        return {"run": owner.run_id}


@app.delete("/runs/{run_id}")
async def end_run(run_id: str) -> dict[str, bool]:
    global owner
    async with lock:
        ended = owner is not None and owner.run_id == run_id
        if ended:
            owner = None
    return {"ended": ended}


@app.post("/reset")
async def reset(
    request: Request,
    label: Annotated[str, Query(max_length=LABEL_MAX)] = "",
    hold: Annotated[float, Query(ge=0, le=MAX_HOLD_SECONDS)] = HOLD_SECONDS,
    run: Annotated[str | None, Query(max_length=32)] = None,
    slots: Annotated[int, Query(ge=1, le=MAX_SLOTS)] = 1,
    rate: Annotated[int | None, Query(ge=1, le=1_000_000)] = None,
    per: Annotated[float, Query(gt=0, le=86_400)] = 1.0,
) -> dict[str, object]:
    """Start a new scenario: forget every count, set its default hold and every account's
    quota (slots in flight; rate calls per `per` seconds, none by default). Refused while
    another run owns the provider: its counts would be wiped under it."""
    global state
    async with lock:
        if other := _owned_by_another(run):
            raise HTTPException(409, f"another run uses this provider: {other.describe()}")
        if owner is not None and owner.run_id == run:
            owner.expires = time.monotonic() + owner.lease
        restore_fences(request)
        state = ProviderState(hold=hold, label=label, quota=Quota(slots, rate, per))
        save_fences({})
    stamp = datetime.now().strftime("%H:%M:%S")
    print(f"\n--- reset @ {stamp} {label} ---", flush=True)
    return {"label": label, "hold": hold, "slots": slots, "rate": rate, "per": per}


@app.get("/report")
async def report() -> dict[str, object]:
    async with lock:
        per_account = {
            name: {"calls": a.calls, "collisions": a.collisions, "in_flight": a.in_flight}
            | {"fenced": a.fenced, "throttled": a.throttled, "peak_in_flight": a.peak_in_flight}
            | {"replayed": a.replayed, "conflicts": a.conflicts}
            for name, a in sorted(state.accounts.items())
        }
        quota = state.quota
    return {
        "label": state.label,
        "hold": state.hold,
        "quota": {"slots": quota.slots, "rate": quota.rate, "per": quota.per},
        "accounts": per_account,
        "calls": sum(a["calls"] for a in per_account.values()),
        "collisions": sum(a["collisions"] for a in per_account.values()),
        "fenced": sum(a["fenced"] for a in per_account.values()),
        "throttled": sum(a["throttled"] for a in per_account.values()),
        "replayed": sum(a["replayed"] for a in per_account.values()),
        "conflicts": sum(a["conflicts"] for a in per_account.values()),
        "in_flight": sum(a["in_flight"] for a in per_account.values()),
        "peak_in_flight": max((a["peak_in_flight"] for a in per_account.values()), default=0),
    }


@app.get("/timeline")
async def timeline() -> dict[str, object]:
    """Every call since the last reset: seconds from the reset to its start and end."""
    async with lock:
        calls = [
            {"account_id": c.account_id, "op": c.op, "start": c.start, "end": c.end}
            | {"collided": c.collided, "fenced": c.fenced, "token": c.token, "slot": c.slot}
            | {"throttled": c.throttled, "key": c.key, "replayed": c.replayed}
            | {"conflict": c.conflict}
            for c in state.calls
        ]
    return {"label": state.label, "hold": state.hold, "calls": calls}


@app.post("/pause")
async def pause(account_id: Annotated[str | None, Query(max_length=64)] = None) -> dict[str, bool]:
    """Hold every call in flight (or only this account's) until /resume: lets tests and the
    fault harness choose when a call ends."""
    global paused
    if account_id is None:
        paused = True
    else:
        paused_accounts.add(account_id)
    return {"paused": True}


@app.post("/resume")
async def resume() -> dict[str, bool]:
    global paused
    paused = False
    paused_accounts.clear()
    return {"paused": False}


@app.get("/health")
async def health() -> dict[str, str]:
    """Who is answering: sample.py checks the instance it started, never a stale one."""
    return {"status": "ok", "instance": os.environ.get("DEMO_API_INSTANCE", "")}
