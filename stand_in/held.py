"""The provider, with calls that the tests and the fault harness hold in flight until they say so.

Serve it: uv run uvicorn stand_in.held:app --port 8765

api_server.py's routes and `router`'s /pause and /resume, which `api_server:app` never serves.
"""

from typing import Annotated

from fastapi import APIRouter, FastAPI, Query

import api_server
from stand_in import rules

router = APIRouter()


@router.post("/pause")
async def pause(account_id: Annotated[str | None, Query(max_length=64)] = None) -> dict[str, bool]:
    """Hold every call in flight (or only this account's), whatever its hold, until /resume."""
    rules.paused.add(account_id)
    return {"paused": True}


@router.post("/resume")
async def resume() -> dict[str, bool]:
    rules.paused.clear()
    return {"paused": False}


app = FastAPI(title="Demo provider, held")
app.include_router(router)
app.include_router(api_server.app.router)  # every other path: the provider itself
