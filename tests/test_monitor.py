"""The monitor links sample.py prints open on their own scenario, in the real `pynenc monitor`."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from demo.stack import ROOT
from helpers import FinishedRun, summaries
from tools import monitor

pytestmark = pytest.mark.slow  # a real `pynenc monitor`

TASKS = {"A": "call_unsafe", "B": "call_keyed", "C": "call_keyed_drop", "D": "refresh_once"}
IDS_BY_TASK = (
    "import json, tasks; ids = tasks.app.orchestrator.get_task_invocation_ids; "
    "print(json.dumps({name: list(ids(getattr(tasks, name).task_id)) for name in %r}))"
)


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
    finished_run: FinishedRun, live_monitor: str
) -> None:
    stdout = finished_run.stdout
    found = links(stdout)
    assert sorted(found) == ["A", "B", "C", "D", "all"], stdout
    assert all(url.startswith(f"{live_monitor}/invocations/timeline?") for url in found.values())
    mine = invocations_by_scenario(finished_run.folder / "demo.db")
    # As many invocations as the run's own summaries say: C's dropped ones are invocations too,
    # D's merged duplicates are not (how many merge depends on when the worker picks one up).
    said = summaries(stdout)
    expected = [said["A"]["calls"], said["B"]["calls"], said["C"]["calls"] + said["C"]["dropped"]]
    assert [len(mine[k]) for k in "ABCD"] == [*expected, said["D"]["calls"]], stdout
    assert expected == [12, 12, 12]

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
