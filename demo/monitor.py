"""Links into `pynenc monitor`'s invocation timeline, zoomed on one scenario or a whole run.

The monitor takes its window in the URL, in UTC without a zone; by default it would show
the last 5 minutes, where a 6-second demo is a sliver at the right edge.
"""

import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode

import httpx

from demo.processes import Child, start_child, stop_children, wait_until

ROOT = Path(__file__).resolve().parent.parent

# Past this span, the monitor picks its own tick spacing; below it, 100 ms ticks read well.
FINE_SPAN_SECONDS = 15.0


def _utc(epoch: float) -> str:
    return (
        datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None).isoformat(timespec="milliseconds")
    )


def timeline_url(base: str, start: float, end: float) -> str:
    """The timeline between two epoch times, without pynenc's own system tasks."""
    params = {
        "time_range": "custom",
        "start_date": _utc(start),
        "end_date": _utc(end),
        "resolution": "100ms" if end - start <= FINE_SPAN_SECONDS else "auto",
        "show_system": "0",
        "show_atomic_service": "0",
    }
    return f"{base.rstrip('/')}/invocations/timeline?{urlencode(params, safe=':')}"


def start(port: int, log_path: Path, env: dict[str, str], timeout: float) -> Child:
    """`pynenc monitor` on a loopback port, on the state env points at; ready when it answers."""
    argv = [sys.executable, "-m", "pynenc", "--app", "tasks.app", "monitor"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    child = start_child("monitor", argv, log_path, env=env, cwd=ROOT)
    try:
        wait_until(
            lambda: _answers(port), timeout, f"the monitor on port {port}", check=child.check_alive
        )
    except BaseException:
        stop_children([child])
        raise
    return child


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/", timeout=2.0).status_code == 200
    except httpx.TransportError:
        return False


def timeline_svg(page: str) -> str:
    """The server-rendered SVG inside a timeline page, with a fixed size so it stands alone."""
    start, end = page.find("<svg"), page.rfind("</svg>")
    if start < 0 or end < 0:
        raise ValueError("the page holds no timeline SVG")
    svg = page[start : end + len("</svg>")]
    if box := re.search(r'viewBox="0 0 (\d+) (\d+)"', svg):
        svg = svg.replace('width="100%"', f'width="{box[1]}" height="{box[2]}"', 1)
    return svg


def invocation_ids(svg: str) -> set[str]:
    return set(re.findall(r'data-invocation-id="([^"]+)"', svg))
