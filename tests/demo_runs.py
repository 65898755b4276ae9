"""Running sample.py as a user types it, reading its summaries back, and its processes."""

import os
import re
import subprocess
from pathlib import Path

from conftest import ROOT
from demo.processes import free_port

SUMMARY = re.compile(
    r"  (?P<enqueued>\d+) enqueued -> (?P<calls>\d+) calls"
    r"(?: \((?P<dropped>\d+) dropped\))?(?: \((?P<deduped>\d+) deduped\))?"
    r", (?P<collisions>\d+) collisions, [\d.]+s \(floor [\d.]+s, \d+%\)"
)


def run_sample(
    tmp_path: Path,
    *args: str,
    uv_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    timeout: float = 240,
) -> subprocess.CompletedProcess:
    """`uv run [uv_args] python sample.py ...` on a free port, a private db and log folder."""
    argv = ["uv", "run", *uv_args, "python", "sample.py", "--port", str(free_port())]
    argv += ["--db", str(tmp_path / "demo.db"), *args]
    base = {**os.environ, "DEMO_LOG_DIR": str(tmp_path / "logs"), "NO_COLOR": "1"}
    base.pop("REDIS_URL", None)
    return subprocess.run(
        argv,
        cwd=ROOT,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def summaries(stdout: str) -> dict[str, dict[str, int]]:
    """The first summary line of each scenario, by letter."""
    found: dict[str, dict[str, int]] = {}
    letter = None
    for line in stdout.splitlines():
        if m := re.match(r"=== ([ABCD])\. ", line):
            letter = m.group(1)
        elif (m := SUMMARY.fullmatch(line)) and letter and letter not in found:
            found[letter] = {k: int(v or 0) for k, v in m.groupdict().items()}
            letter = None
    return found


def process_state(pid: int) -> str | None:
    """The kernel's one-letter state of pid, or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return ""


def processes_mentioning(marker: str) -> list[str]:
    """Live processes whose command line or environment holds marker: leaks, if any."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if process_state(int(entry.name)) not in (None, "Z") and marker.encode() in cmd + env:
            found.append(f"{entry.name} {cmd.replace(b'\0', b' ').decode(errors='replace')}")
    return found
