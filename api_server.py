"""The stand-in external provider: one call per account at a time, or it counts a collision.

Run it: uv run uvicorn api_server:app --port 8765

Beyond the article, a reset may give every account a quota (`?slots=N&rate=R&per=S`), and a
call may carry a fencing token (`?token=T&slot=K`, as a conditional request carries a version)
and an `Idempotency-Key` header (the IETF httpapi draft's: a repeat is replayed from the store,
409 while its first call is in flight, 422 for another call). demo/ledger.py judges each call:
applied, or fenced, replayed, refused with 409, throttled (a 429), each counted on its own line
and none counted against a quota. The newest tokens are kept beside the logs
(DEMO_LOG_DIR/fences-PORT.json), so the fence outlives a restart, as a real provider's would;
a reset, which starts the next scenario, clears them and forgets the keys.
"""

import asyncio
import dataclasses
import json
import os
import secrets
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated

import fastapi
from fastapi import FastAPI, Header, HTTPException, Query, Request
from pydantic import BaseModel

from demo import settings
from demo.ledger import Call, KeyReused, Owner, ProviderState, Quota
from demo.scenarios import HOLD_SECONDS
from demo.settings import NAME_PATTERN

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


def save_fences(fences: list[tuple[str, int, int]]) -> None:
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
        fences = [(str(n), int(s), int(t)) for n, s, t in json.loads(fences_file.read_text())]
    except (OSError, ValueError, TypeError):  # none kept, or not as save_fences writes them
        fences = []
    for name, slot, newest in fences:
        state.accounts[name].newest.setdefault(slot, newest)


app = FastAPI(title="Demo provider")
state = ProviderState()
# One lock around every read-modify-write of the counters: requests are truly concurrent.
lock = asyncio.Lock()
# The accounts whose calls stay in flight past their hold (None: every account's): none here;
# tools/held.py's /pause lets tests and the fault harness choose when a call ends.
held: set[str | None] = set()
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
        try:
            keyed = current.keyed(key, account_id, op)
        except KeyReused as reused:
            raise HTTPException(422, str(reused)) from None
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
        # A held call stays in flight, up to a deadline: it never hangs.
        deadline = time.monotonic() + MAX_HOLD_SECONDS
        while held & {None, account_id} and time.monotonic() < deadline:
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


def _refuse_unless_free_for(run_id: str | None) -> None:
    """A 409 while another live run (not run_id's) owns the provider."""
    if owner is not None and owner.expires >= time.monotonic() and owner.run_id != run_id:
        raise HTTPException(409, f"another run uses this provider: {owner.describe()}")


@app.post("/runs")
async def begin_run(
    label: Annotated[str, Query(max_length=LABEL_MAX)],
    lease: Annotated[float, Query(gt=0, le=3600)],
) -> dict[str, str]:
    """One run at a time: its resets, and nobody else's, until it ends or stays silent for
    `lease` seconds after its last reset (a crashed run)."""
    global owner
    async with lock:
        _refuse_unless_free_for(None)
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
        _refuse_unless_free_for(run)
        if owner is not None and owner.run_id == run:
            owner.expires = time.monotonic() + owner.lease
        restore_fences(request)
        state = ProviderState(hold=hold, label=label, quota=Quota(slots, rate, per))
        save_fences([])
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
    counts = ("calls", "collisions", "fenced", "throttled", "replayed", "conflicts", "in_flight")
    return {
        "label": state.label,
        "hold": state.hold,
        "quota": dataclasses.asdict(quota),
        "accounts": per_account,
        **{count: sum(a[count] for a in per_account.values()) for count in counts},
        "peak_in_flight": max((a["peak_in_flight"] for a in per_account.values()), default=0),
    }


@app.get("/timeline")
async def timeline() -> dict[str, object]:
    """Every call since the last reset: seconds from the reset to its start and end."""
    async with lock:
        calls = [dataclasses.asdict(c) for c in state.calls]
    return {"label": state.label, "hold": state.hold, "calls": calls}


@app.get("/health")
async def health() -> dict[str, str]:
    """Who is answering: sample.py checks the instance it started, never a stale one."""
    return {"status": "ok", "instance": os.environ.get("DEMO_API_INSTANCE", "")}
