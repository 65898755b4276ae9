"""The provider's fences: the newest token each account's slot has seen, kept on disk.

They outlive a restart, as a real provider's would (without them, token 3 was applied after
token 7 across a restart): in DEMO_LOG_DIR/fences-PORT.json, one file per port the provider
serves on, named by the first request it serves. A reset clears them.
"""

import contextlib
import json
import os
from pathlib import Path

from fastapi import Request

from demo import settings

newest: dict[tuple[str, int], int] = {}  # (account, slot): the newest token seen
file: Path | None = None  # where they are kept, once the first request has named the port


async def restore(request: Request) -> None:
    """At the first request a (re)started provider serves: the fences it kept on its port."""
    global file
    if file is None:
        port = (request.scope.get("server") or ("", 0))[1]
        file = Path(settings.get("DEMO_LOG_DIR")) / f"fences-{port}.json"
        with contextlib.suppress(OSError, ValueError, TypeError):  # none, or not as save() wrote
            newest.update({(str(n), int(s)): int(t) for n, s, t in json.loads(file.read_text())})


def admit(account_id: str, slot: int, token: int) -> bool:
    """False for a token older than its slot's newest; otherwise it is the newest, kept."""
    seen = newest.get((account_id, slot))
    if seen is not None and token < seen:
        return False
    if seen != token:
        newest[account_id, slot] = token
        save()
    return True


def clear() -> None:
    newest.clear()
    save()


def save() -> None:
    """Write the newest tokens, whole or not at all (a crash mid-write leaves the last ones)."""
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        partial = file.with_suffix(".tmp")
        partial.write_text(json.dumps([[n, s, t] for (n, s), t in newest.items()]))
        os.replace(partial, file)
