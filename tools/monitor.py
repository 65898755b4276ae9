"""A real `pynenc monitor` on a loopback port, and its timeline read back, for the picture.

demo/links.py makes the links into it; this runs one and reads what it draws (and the tests).
"""

import re
import sys
from pathlib import Path

import httpx

from demo.processes import Child, start_child, stop_children, wait_until

ROOT = Path(__file__).resolve().parent.parent


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
