"""The provider's fences: the newest token each account's slot has seen, kept on disk.

They outlive a restart, as a real provider's would (without them, token 3 was applied after
token 7 across a restart): in DEMO_LOG_DIR/fences-PORT.jsonl, one file per port the provider
serves on, named by the first request it serves. Each new token is one line appended (rewriting
every account's on each cost the provider O(accounts) a call, 45% of its time at 500); the last
line of a slot wins. A reset clears them.
"""

import contextlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from fastapi import Request

from demo import settings

newest: dict[tuple[str, int], int] = {}  # (account, slot): the newest token seen
file: Path | None = None  # where they are kept, once the first request has named the port


async def restore(request: Request) -> None:
    """At the first request a (re)started provider serves: the fences it kept on its port, then
    written back whole, so a line a crash cut short is dropped before the next is appended."""
    global file
    if file is None:
        port = (request.scope.get("server") or ("", 0))[1]
        file = Path(settings.get("DEMO_LOG_DIR")) / f"fences-{port}.jsonl"
        with contextlib.suppress(OSError):  # none yet
            for line in file.read_text().splitlines():
                with contextlib.suppress(ValueError, TypeError):  # cut short, or not as kept
                    name, slot, token = json.loads(line)
                    newest[str(name), int(slot)] = int(token)
        keep(newest.items(), whole=True)


def admit(account_id: str, slot: int, token: int) -> bool:
    """False for a token older than its slot's newest; otherwise it is the newest, kept."""
    seen = newest.get((account_id, slot))
    if seen is not None and token < seen:
        return False
    if seen != token:
        newest[account_id, slot] = token
        keep([((account_id, slot), token)])
    return True


def clear() -> None:
    newest.clear()
    keep([], whole=True)


def keep(tokens: Iterable[tuple[tuple[str, int], int]], whole: bool = False) -> None:
    """Append these tokens to the file, one line each; whole: they replace it, all or none."""
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps([n, s, t]) + "\n" for (n, s), t in tokens)
        if not whole:
            with file.open("a") as out:
                out.write(lines)
            return
        partial = file.with_suffix(".tmp")
        partial.write_text(lines)
        os.replace(partial, file)
