"""The stand-in external provider: one call per account at a time, or it counts a collision.

Run it: uv run uvicorn api_server:app --port 8765
"""

import asyncio
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated

from fastapi import FastAPI, Path, Query
from pydantic import BaseModel

from demo.settings import HOLD_SECONDS

MAX_HOLD_SECONDS = 30.0
# Letters, digits and a few separators: no spaces, no control characters.
NAME = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
LABEL_MAX = 200
CALL_SHAPE = "expected POST /call/{account_id}/{op}: both 1-64 characters of A-Za-z0-9_.:-"


@dataclass
class Account:
    calls: int = 0
    collisions: int = 0
    in_flight: int = 0


@dataclass
class Call:
    account_id: str
    op: str
    start: float
    end: float | None = None
    collided: bool = False


@dataclass
class Provider:
    """Everything the provider remembers since the last reset."""

    hold: float = HOLD_SECONDS
    label: str = ""
    started: float = field(default_factory=time.monotonic)
    accounts: dict[str, Account] = field(default_factory=lambda: defaultdict(Account))
    calls: list[Call] = field(default_factory=list)


app = FastAPI(title="Demo provider")
state = Provider()
# One lock around every read-modify-write of the counters: requests are truly concurrent.
lock = asyncio.Lock()
# Set by /pause: calls then stay inside their in-flight window until /resume.
paused = False
PAUSE_POLL_SECONDS = 0.01


class Outcome(BaseModel):
    outcome: str


@app.post("/call/{account_id}/{op}")
async def call(
    account_id: NAME,
    op: NAME,
    hold: Annotated[float | None, Query(ge=0, le=MAX_HOLD_SECONDS)] = None,
) -> Outcome:
    async with lock:
        # The scenario this call belongs to, even if a /reset comes while it is in flight.
        current = state
        acc = current.accounts[account_id]
        acc.calls += 1
        collided = acc.in_flight > 0
        acc.collisions += int(collided)
        acc.in_flight += 1
        record = Call(account_id, op, time.monotonic() - current.started, collided=collided)
        current.calls.append(record)
        seconds = current.hold if hold is None else hold
    print(f"  [{'COLLISION' if collided else 'ok       '}] {account_id:<8} {op}", flush=True)
    try:
        await asyncio.sleep(seconds)
        # A paused provider keeps the call in flight, up to a deadline: it never hangs.
        deadline = time.monotonic() + MAX_HOLD_SECONDS
        while paused and time.monotonic() < deadline:
            await asyncio.sleep(PAUSE_POLL_SECONDS)
    finally:
        async with lock:
            acc.in_flight -= 1
            record.end = time.monotonic() - current.started
    return Outcome(outcome="collision" if collided else "ok")


@app.post("/call/{malformed:path}", status_code=422)
async def call_malformed(malformed: str) -> dict[str, str]:
    """Anything else under /call/ (an empty account id or op, extra parts): say what fits."""
    return {"detail": CALL_SHAPE}


@app.post("/reset")
async def reset(
    label: Annotated[str, Query(max_length=LABEL_MAX)] = "",
    hold: Annotated[float, Query(ge=0, le=MAX_HOLD_SECONDS)] = HOLD_SECONDS,
) -> dict[str, object]:
    """Start a new scenario: forget every count and set its default hold."""
    global state
    async with lock:
        state = Provider(hold=hold, label=label)
    stamp = datetime.now().strftime("%H:%M:%S")
    print(f"\n--- reset @ {stamp} {label} ---", flush=True)
    return {"label": label, "hold": hold}


@app.get("/report")
async def report() -> dict[str, object]:
    async with lock:
        per_account = {
            name: {"calls": a.calls, "collisions": a.collisions, "in_flight": a.in_flight}
            for name, a in sorted(state.accounts.items())
        }
    return {
        "label": state.label,
        "hold": state.hold,
        "accounts": per_account,
        "calls": sum(a["calls"] for a in per_account.values()),
        "collisions": sum(a["collisions"] for a in per_account.values()),
        "in_flight": sum(a["in_flight"] for a in per_account.values()),
    }


@app.get("/timeline")
async def timeline() -> dict[str, object]:
    """Every call since the last reset: seconds from the reset to its start and end."""
    async with lock:
        calls = [
            {"account_id": c.account_id, "op": c.op, "start": c.start, "end": c.end}
            | {"collided": c.collided}
            for c in state.calls
        ]
    return {"label": state.label, "hold": state.hold, "calls": calls}


@app.post("/pause")
async def pause() -> dict[str, bool]:
    """Hold every call in flight until /resume: lets tests choose when a call ends."""
    global paused
    paused = True
    return {"paused": True}


@app.post("/resume")
async def resume() -> dict[str, bool]:
    global paused
    paused = False
    return {"paused": False}


@app.get("/health")
async def health() -> dict[str, str]:
    """Who is answering: sample.py checks the instance it started, never a stale one."""
    return {"status": "ok", "instance": os.environ.get("DEMO_API_INSTANCE", "")}
