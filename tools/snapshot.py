"""Regenerate the README's picture: one default run, as pynenc's monitor draws it and as lanes.

Run it: uv run python -m tools.snapshot     (writes docs/timeline.svg and the README's lane block)

It runs sample.py on a private database, opens the whole-run link in a real `pynenc monitor`,
keeps the SVG the monitor renders on its server (it carries its own styles, so it reads the
same without the CDN fonts and styles the page loads), and pastes the same run's terminal
lane charts between the README's snapshot markers.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from xml.etree import ElementTree

import httpx

from demo.processes import free_port, stop_children
from tools import monitor

ROOT = monitor.ROOT
BEGIN, END = "<!-- snapshot:begin -->", "<!-- snapshot:end -->"
DEADLINE = 300.0
LANE_COLUMNS = 62
DEFAULT_MONITOR = "http://127.0.0.1:8000"


def run_demo(workdir: Path, monitor_url: str) -> str:
    argv = [sys.executable, "sample.py", "--port", str(free_port())]
    argv += ["--db", str(workdir / "demo.db"), "--monitor-url", monitor_url]
    # Narrow lane charts: the README is a front door, kept short.
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": str(LANE_COLUMNS)}
    env["DEMO_LOG_DIR"] = str(workdir / "logs")
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=DEADLINE)
    if done.returncode != 0:
        raise RuntimeError(f"sample.py exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done.stdout


def lanes_block(stdout: str, monitor_url: str) -> str:
    """The run's four summaries, and the lane charts where an account made more than one call
    (a chart of single bars says nothing the summary does not). Each summary's monitor link
    is cut after its path, at the monitor's default address: its window was this run's."""
    body = stdout.split("\n--- the provider's call log ---")[0]
    sections = []
    for section in body.split("\n\n"):
        lines = [_short_link(line, monitor_url) for line in section.splitlines()]
        if all(" calls=1 " in line for line in lines if re.match(r"  (OK| X) ", line)):
            lines = [line for line in lines if not _in_a_chart(line)]
        sections.append("\n".join(lines))
    return "\n\n".join(sections).strip("\n")


def _short_link(line: str, monitor_url: str) -> str:
    if not line.startswith("  monitor: "):
        return line
    return line.replace(monitor_url, DEFAULT_MONITOR).split("?")[0] + "?..."


def _in_a_chart(line: str) -> bool:
    """A lane chart's row, axis, tick labels or legend."""
    return line.rstrip().endswith("|") or line.startswith(" " * 11) or line.startswith("  ===")


def whole_run_url(stdout: str) -> str:
    found = re.search(r"^  the whole run: (\S+)$", stdout, re.MULTILINE)
    if not found:
        raise RuntimeError("sample.py printed no whole-run link")
    return found.group(1)


def paste(readme: Path, svg_name: str, lanes: str) -> None:
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise RuntimeError(f"{readme} has no {BEGIN} ... {END} block")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    block = (
        f"{BEGIN}\n![All four scenarios on pynenc's invocation timeline]({svg_name})\n\n"
        f"The same run in the terminal (`NO_COLOR=1`):\n\n```\n{lanes}\n```\n{END}"
    )
    readme.write_text(head + block + tail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where timeline.svg goes")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="snapshot-") as tmp:
        workdir, port = Path(tmp), free_port()
        stdout = run_demo(workdir, f"http://127.0.0.1:{port}")
        env = {"DEMO_DB": str(workdir / "demo.db")}
        child = monitor.start(port, workdir / "logs" / "monitor.log", env, timeout=60)
        try:
            page = httpx.get(whole_run_url(stdout), timeout=60)
            page.raise_for_status()
        finally:
            stop_children([child])
    svg = monitor.timeline_svg(page.text)
    ElementTree.fromstring(svg)  # a standalone image must be well-formed XML
    args.out.mkdir(parents=True, exist_ok=True)
    image = args.out / "timeline.svg"
    image.write_text(svg + "\n")
    lanes = lanes_block(stdout, f"http://127.0.0.1:{port}")
    paste(args.readme, os.path.relpath(image, args.readme.parent), lanes)
    shown = len(monitor.invocation_ids(svg))
    print(f"wrote {image} ({shown} invocations) and the lane block of {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
