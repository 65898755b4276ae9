"""The provider, with calls that tests and the fault harness hold in flight until they say so.

Serve it: uv run uvicorn tools.held:app --port 8765    (api_server.py's app, plus /pause and
/resume; the tests and python -m tools.faults start it through their stack)
"""

from typing import Annotated

from fastapi import Query

import api_server

app = api_server.app


@app.post("/pause")
async def pause(account_id: Annotated[str | None, Query(max_length=64)] = None) -> dict[str, bool]:
    """Hold every call in flight (or only this account's), however long its hold, until
    /resume."""
    api_server.held.add(account_id)
    return {"paused": True}


@app.post("/resume")
async def resume() -> dict[str, bool]:
    api_server.held.clear()
    return {"paused": False}
