"""What the harness needs of every provider it talks to: one run at a time, and who answers.

A router the provider includes (api_server.py): /runs, /health, and `owners_reset`, a
dependency of its /reset. demo/provider.py is the harness's side.
"""

import os
import secrets
import time
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query

LABEL_MAX = 200  # a run's label, and a scenario's
router = APIRouter()


@dataclass
class Owner:
    """The run that owns the provider: only its resets count until it ends or goes stale."""

    run_id: str
    label: str
    began: str  # wall clock, for the person refused
    lease: float  # seconds each of its resets keeps the provider for it
    expires: float  # time.monotonic(): past it, a crashed run no longer holds the provider


# Each check-then-set below runs without an await: no other request comes between the two.
owner: Owner | None = None


def _refuse_unless_free_for(run_id: str | None) -> None:
    """A 409 while another live run (not run_id's) owns the provider."""
    if owner is not None and owner.expires >= time.monotonic() and owner.run_id != run_id:
        left = max(0.0, owner.expires - time.monotonic())
        said = f"{owner.label!r}, started at {owner.began} (stale in {left:.0f}s if it has died)"
        raise HTTPException(409, f"another run uses this provider: {said}")


@router.post("/runs")
async def begin_run(
    label: Annotated[str, Query(max_length=LABEL_MAX)],
    lease: Annotated[float, Query(gt=0, le=3600)],
) -> dict[str, str]:
    """One run at a time: its resets, and nobody else's, until it ends or stays silent for
    `lease` seconds after its last reset."""
    global owner
    _refuse_unless_free_for(None)
    began = time.strftime("%H:%M:%S")
    owner = Owner(secrets.token_hex(8), label, began, lease, time.monotonic() + lease)
    return {"run": owner.run_id}


@router.delete("/runs/{run_id}")
async def end_run(run_id: str) -> dict[str, bool]:
    global owner
    if ended := owner is not None and owner.run_id == run_id:
        owner = None
    return {"ended": ended}


async def owners_reset(run: Annotated[str | None, Query(max_length=32)] = None) -> None:
    """/reset's guard: a 409 while another run owns the provider; the owner's own reset keeps
    it for `lease` seconds more."""
    _refuse_unless_free_for(run)
    if owner is not None and owner.run_id == run:
        owner.expires = time.monotonic() + owner.lease


@router.get("/health")
async def health() -> dict[str, str]:
    """Who is answering: sample.py checks the instance it started, never a stale one."""
    return {"status": "ok", "instance": os.environ.get("DEMO_API_INSTANCE", "")}
