"""The monitor links sample.py prints open on their own scenario, in the real `pynenc monitor`."""

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import ROOT
from demo import monitor
from demo.processes import free_port, stop_children
from demo_runs import run_sample

TASKS = {"A": "call_unsafe", "B": "call_keyed", "C": "call_keyed_drop", "D": "refresh_once"}
IDS_BY_TASK = (
    "import json, tasks; ids = tasks.app.orchestrator.get_task_invocation_ids; "
    "print(json.dumps({name: list(ids(getattr(tasks, name).task_id)) for name in %r}))"
)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, int]]:
    """One default sample.py run, its database, and the port its links point at."""
    tmp_path = tmp_path_factory.mktemp("monitor")
    port = free_port()
    result = run_sample(tmp_path, "--no-chart", "--monitor-url", f"http://127.0.0.1:{port}")
    assert result.returncode == 0, result.stdout + result.stderr
    yield result.stdout, tmp_path, port


@pytest.fixture(scope="module")
def live_monitor(finished_run: tuple[str, Path, int]) -> Iterator[None]:
    _, tmp_path, port = finished_run
    env = {"DEMO_DB": str(tmp_path / "demo.db")}
    child = monitor.start(port, tmp_path / "logs" / "monitor.log", env, timeout=60)
    try:
        yield
    finally:
        stop_children([child])


def invocations_by_scenario(db: Path) -> dict[str, set[str]]:
    env = {**os.environ, "DEMO_DB": str(db)}
    probe = IDS_BY_TASK % (tuple(TASKS.values()),)
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    by_task = json.loads(result.stdout.strip().splitlines()[-1])
    return {letter: set(by_task[task]) for letter, task in TASKS.items()}


def links(stdout: str) -> dict[str, str]:
    """Each scenario's link by letter, and the whole run's under "all"."""
    found: dict[str, str] = {}
    letter = None
    for line in stdout.splitlines():
        if m := re.match(r"=== ([ABCD])\. ", line):
            letter = m.group(1)
        elif (m := re.fullmatch(r"  monitor: (\S+)", line)) and letter:
            found[letter] = m.group(1)
        elif m := re.fullmatch(r"  the whole run: (\S+)", line):
            found["all"] = m.group(1)
    return found


@pytest.mark.e2e
def test_each_link_shows_its_own_scenario_and_no_other(
    finished_run: tuple[str, Path, int], live_monitor: None
) -> None:
    stdout, tmp_path, port = finished_run
    found = links(stdout)
    assert sorted(found) == ["A", "B", "C", "D", "all"], stdout
    assert all(
        url.startswith(f"http://127.0.0.1:{port}/invocations/timeline?") for url in found.values()
    )
    mine = invocations_by_scenario(tmp_path / "demo.db")
    assert [len(mine[k]) for k in "ABCD"] == [12, 12, 12, 3]

    for letter in "ABCD":
        page = httpx.get(found[letter], timeout=60)
        assert page.status_code == 200, page.text[:500]
        shown = monitor.invocation_ids(monitor.timeline_svg(page.text))
        assert mine[letter] <= shown, f"{letter}'s link misses its own invocations"
        others = set().union(*(mine[k] for k in "ABCD" if k != letter))
        assert not shown & others, f"{letter}'s link shows another scenario's invocations"

    page = httpx.get(found["all"], timeout=60)
    assert page.status_code == 200
    assert set().union(*mine.values()) <= monitor.invocation_ids(monitor.timeline_svg(page.text))
    assert "uv run pynenc monitor" in stdout
