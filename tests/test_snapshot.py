"""The README's picture is regenerable: the script draws a real run through the real monitor."""

import re
import shutil
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest

from conftest import ROOT
from demo import monitor, snapshot
from demo_runs import processes_mentioning


@pytest.mark.e2e
def test_the_snapshot_script_draws_all_four_scenarios(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    result = subprocess.run(
        [sys.executable, "-m", "demo.snapshot", "--out", str(tmp_path / "docs")]
        + ["--readme", str(readme)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, result.stdout + result.stderr

    svg = (tmp_path / "docs" / "timeline.svg").read_text()
    ElementTree.fromstring(svg)
    text = readme.read_text()
    block = text.split(snapshot.BEGIN, 1)[1].split(snapshot.END, 1)[0]
    # Every invocation of the run is drawn: 12 each for A, B and C, and D's (24 less merged).
    # pynenc's recovery tasks, which a worker runs as it comes up, may land in the window
    # too (the monitor draws them despite show_system=0): hence at least.
    deduped = re.search(r"24 enqueued -> \d+ calls \((\d+) deduped\)", block)
    assert deduped, block
    assert len(monitor.invocation_ids(svg)) >= 36 + 24 - int(deduped.group(1))
    assert "](docs/timeline.svg)" in block
    assert [h for h in ("=== A.", "=== B.", "=== C.", "=== D.") if h in block] == [
        "=== A.",
        "=== B.",
        "=== C.",
        "=== D.",
    ]
    assert "monitor: http" not in block
    # Everything outside the block is as it was.
    original = (ROOT / "README.md").read_text()
    assert text.split(snapshot.BEGIN)[0] == original.split(snapshot.BEGIN)[0]
    assert text.split(snapshot.END)[1] == original.split(snapshot.END)[1]
    assert processes_mentioning("snapshot-") == []
