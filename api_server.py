"""The stand-in external provider: one call per account at a time, or it counts a collision.

Run it: uv run uvicorn api_server:app --port 8765

Beyond the article, a reset may give every account a quota (`?slots=N&rate=R&per=S`), and
/quota/{account_id} one account its own, mid-run; a call may carry a fencing token
(`?token=T&slot=K`, as a conditional request carries a version) and an `Idempotency-Key` header
(the IETF httpapi draft's). stand_in/rules.py judges each call: applied, or fenced, replayed,
refused with 409, throttled (a 429), each counted on its own.
"""

import asyncio
import dataclasses
from datetime import datetime
from typing import Annotated

from fastapi import Depends, FastAPI, Header, Path, Query

from demo import ownership
from demo.scenarios import HOLD_SECONDS
from stand_in import NAME_PATTERN, fences, rules

NAME = Annotated[str, Path(min_length=1, max_length=64, pattern=NAME_PATTERN)]
# The header a call names its effect by (the task sends its invocation id); any visible ASCII.
IDEMPOTENCY_KEY = Annotated[
    str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255, pattern=r"^[!-~]+$")
]
CALL_SHAPE = "expected POST /call/{account_id}/{op}: both 1-64 characters of A-Za-z0-9_.:-"

app = FastAPI(title="Demo provider", dependencies=[Depends(fences.restore)])
app.include_router(ownership.router)  # /runs and /health: what the harness asks of a provider
state = rules.Books()
# One lock around every read-modify-write of the counters: requests are truly concurrent.
lock = asyncio.Lock()


@app.post("/call/{account_id}/{op}")
async def call(
    account_id: NAME,
    op: NAME,
    hold: Annotated[float | None, Query(ge=0, le=rules.MAX_HOLD_SECONDS)] = None,
    token: Annotated[int | None, Query(ge=0, le=rules.MAX_TOKEN)] = None,
    slot: Annotated[int, Query(ge=0, le=rules.MAX_SLOTS)] = 0,
    key: IDEMPOTENCY_KEY = None,
) -> dict[str, str]:
    async with lock:
        books = state  # this scenario's, even if a /reset comes while the call is in flight
        record = books.judge(account_id, op, token, slot, key)  # the rules: tokens, keys, quotas
    print(f"  [{record.mark}] {account_id:<8} {op}{record.note}", flush=True)
    if not record.applied:  # refused, or answered from the store: nothing is held
        return books.answer(record)

    try:
        await rules.hold(books.hold if hold is None else hold, account_id)
    finally:
        async with lock:
            books.release(record)
    if record.fenced:  # a newer claim started while it was in flight: not applied after all
        print(f"  [{record.mark}] {account_id:<8} {op}{record.note}", flush=True)
    return {"outcome": record.outcome}


@app.post("/call/{malformed:path}", status_code=422)
async def call_malformed(malformed: str) -> dict[str, str]:
    """Anything else under /call/ (an empty account id or op, extra parts): say what fits."""
    return {"detail": CALL_SHAPE}


@app.post("/reset", dependencies=[Depends(ownership.owners_reset)])
async def reset(
    label: Annotated[str, Query(max_length=ownership.LABEL_MAX)] = "",
    hold: Annotated[float, Query(ge=0, le=rules.MAX_HOLD_SECONDS)] = HOLD_SECONDS,
    slots: Annotated[int, Query(ge=1, le=rules.MAX_SLOTS)] = 1,
    rate: Annotated[int | None, Query(ge=1, le=1_000_000)] = None,
    per: Annotated[float, Query(gt=0, le=86_400)] = 1.0,
) -> dict[str, object]:
    """Start a new scenario: forget every count, set its default hold and every account's
    quota (slots in flight; rate calls per `per` seconds, none by default). Refused while
    another run owns the provider: its counts would be wiped under it."""
    global state
    async with lock:
        state = rules.Books(hold=hold, label=label, quota=rules.Quota(slots, rate, per))
        fences.clear()
    print(f"\n--- reset @ {datetime.now():%H:%M:%S} {label} ---", flush=True)
    return {"label": label, "hold": hold, "slots": slots, "rate": rate, "per": per}


@app.post("/quota/{account_id}")
async def quota(
    account_id: NAME,
    slots: Annotated[int, Query(ge=1, le=rules.MAX_SLOTS)] = 1,
    rate: Annotated[int | None, Query(ge=1, le=1_000_000)] = None,
    per: Annotated[float, Query(gt=0, le=86_400)] = 1.0,
) -> dict[str, object]:
    """One account's quota from now on: each later call is judged against it."""
    async with lock:
        state.set_quota(account_id, rules.Quota(slots, rate, per))
    print(f"  [quota]   {account_id:<8} {slots} in flight, rate {rate} per {per:g}s", flush=True)
    return {"account_id": account_id, "slots": slots, "rate": rate, "per": per}


@app.get("/report")
async def report() -> dict[str, object]:
    shown = ("calls", "collisions", "in_flight", "fenced", "throttled", "peak_in_flight")
    async with lock:
        per_account = {
            name: {count: getattr(a, count) for count in (*shown, "replayed", "conflicts")}
            for name, a in sorted(state.accounts.items())
        }
        limits = {n: [dataclasses.asdict(q) for q in a.limits] for n, a in state.accounts.items()}
    summed = ("calls", "collisions", "fenced", "throttled", "replayed", "conflicts", "in_flight")
    return {
        "label": state.label,
        "hold": state.hold,
        "quota": dataclasses.asdict(state.quota),
        "accounts": per_account,
        **{count: sum(a[count] for a in per_account.values()) for count in summed},
        "peak_in_flight": max((a["peak_in_flight"] for a in per_account.values()), default=0),
        "limits": {name: each for name, each in sorted(limits.items()) if each},  # /quota's
    }


@app.get("/timeline")
async def timeline() -> dict[str, object]:
    """Every call since the last reset: seconds from the reset to its start and end."""
    async with lock:
        calls = [dataclasses.asdict(c) for c in state.calls]
    return {"label": state.label, "hold": state.hold, "calls": calls}
