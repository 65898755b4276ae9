"""The live view of the keys that hold or wait: `python -m keyclaim top --app tasks.app`.

Refreshed once a second, per key: its holders against its limit (slot, token, how long held,
runner), the calls waiting in its line and the oldest one's wait, the rate used in its window;
then the fleet's workers with their settings. `--once` prints one frame, `--json` one document
(keyclaim/README.md, "Seeing the keys"). It reads the claim's indexes of busy keys only (the
stores' `view_keys`), never writes, and costs the same with 10 keys ever seen as with 10,000.
The upstream change that retires it: a per-key view in pynenc's monitor, from the same indexes.
"""

import argparse
import json
import shutil
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from keyclaim import limits, overrides
from keyclaim.fleet import fleet

if TYPE_CHECKING:
    from pynenc import Pynenc


def limit_for(task: str | None, line: str, override: Any = None) -> limits.Limit:
    """The limit a key's calls are admitted against: what its task declared (keyclaim.limit,
    by its rule for this key), under the operator's override; one call per key without a task."""
    if not task:
        return limits.ONE
    values = {}  # a rule's key values: a KEYS line is the key's values as text, in JSON
    if line.startswith("{"):
        values = {name: json.dumps(text) for name, text in json.loads(line).items()}
    return limits.for_key(task, values, override)


def frame(app: "Pynenc") -> dict[str, Any]:
    """One view of the app's store, as a JSON-ready document."""
    view = app.orchestrator.view_keys()
    overridden, keys = overrides.read(app, view["keys"]), []
    for line, seen in sorted(view["keys"].items()):
        seen["holders"].sort(key=lambda holder: holder["slot"])
        task = next((h["task"] for h in seen["holders"] if h["task"]), None)
        limit, admitted = limit_for(task, line, overridden.get(line)), seen.pop("admitted")
        used = None if limit.rate is None else sum(age < limit.window for age in admitted)
        shown = {"slots": limit.slots, "rate": limit.rate, "per": limit.per}
        keys.append({"key": line, "task": task, "limit": shown, **seen, "rate_used": used})
    workers = [
        {"runner_id": m.runner_id, "pid": m.pid, "host": m.host, "settings": m.settings, **m.about}
        for m in fleet(app)
    ]
    return {
        "app": app.app_id,
        "backend": app.orchestrator.BACKEND,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "keys": keys,
        "fleet": workers,
        "reads": view["reads"],
    }


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}s"


def text(doc: dict[str, Any], width: int | None) -> str:
    """The document as lines, cut to a terminal's width (None: whole)."""
    reads = ", ".join(f"{n} {what}" for what, n in doc["reads"].items())
    waiting = sum(k["waiting"] for k in doc["keys"])
    lines = [
        f"keyclaim top: {doc['app']} on {doc['backend']}, {doc['at']}: {len(doc['keys'])} keys "
        f"busy, {waiting} calls waiting (read: {reads})",
        f"{'HELD':>5} {'WAIT':>5} {'OLDEST':>7} {'RATE':>12}  KEY (TASK)",
    ]
    for k in doc["keys"]:
        limit, used = k["limit"], k["rate_used"]
        rate = "-" if limit["rate"] is None else f"{used}/{limit['rate']} {limit['per']:g}s"
        held = f"{len(k['holders'])}/{limit['slots']}"
        lines.append(
            f"{held:>5} {k['waiting']:>5} {_seconds(k['oldest_wait']):>7} {rate:>12}  "
            f"{k['key']} ({k['task']})"
        )
        for h in k["holders"]:
            due = "" if h["due_in"] is None else f", due in {_seconds(h['due_in'])}"
            lines.append(
                f"{'':>7}slot {h['slot']}: {h['status']} {_seconds(h['held_for'])} token "
                f"{h['token'] or '-'} runner {(h['runner'] or '-')[:8]}{due}  {h['invocation']}"
            )
    lines.append(f"FLEET: {len(doc['fleet'])} live workers")
    for w in doc["fleet"]:
        about = ", ".join(f"{k} {w[k]}" for k in ("runner", "threads", "pynenc") if k in w)
        settings = ", ".join(f"{name} {value}" for name, value in w["settings"].items())
        lines.append(f"  {w['runner_id'][:8]} pid {w['pid']} on {w['host']}: {about}; {settings}")
    return "\n".join(line[:width] for line in lines)


def main(argv: list[str]) -> None:
    """The `top` command, until Ctrl-C (status 0). An app without the claim, like a wrong flag,
    is argparse's usage error (status 2), in one line."""
    parser = argparse.ArgumentParser(
        prog="python -m keyclaim top", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--app", required=True, help="the app, as pynenc's --app: tasks.app")
    parser.add_argument("--once", action="store_true", help="one frame, then end")
    parser.add_argument("--json", action="store_true", help="as one JSON document (--once)")
    parser.add_argument("--every", type=float, default=1.0, help="seconds between frames")
    args = parser.parse_args(argv)
    from pynenc.util.import_app import find_app_instance

    app = find_app_instance(args.app)
    if not hasattr(app.orchestrator, "view_keys"):
        parser.error(f"{args.app} runs without the claim: no keys to show")
    clear = "\x1b[H\x1b[2J" if sys.stdout.isatty() else ""  # and cut to its width
    try:
        while True:
            doc = frame(app)
            if args.json:
                print(json.dumps(doc, indent=1))
            else:
                width = shutil.get_terminal_size().columns if clear else None
                print(clear + text(doc, width), flush=True)
            if args.once or args.json:
                return
            time.sleep(args.every)
    except KeyboardInterrupt:
        return
