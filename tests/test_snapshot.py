"""The README's picture is regenerable: the script draws a real run through the real monitor.

The run is the session's default sample.py run, made as tools/snapshot.py makes its own (a
private database, NO_COLOR, links to a monitor on a free port); the rest of the script runs
as it is, a real `pynenc monitor` included.
"""

import re
import shutil
from pathlib import Path
from xml.etree import ElementTree

import pytest

from demo.stack import ROOT
from helpers import FinishedRun, processes_mentioning
from tools import monitor, snapshot

pytestmark = pytest.mark.slow  # a real `pynenc monitor`


@pytest.mark.e2e
def test_the_snapshot_script_draws_all_four_scenarios(
    tmp_path: Path, finished_run: FinishedRun, monkeypatch: pytest.MonkeyPatch
) -> None:
    def the_sessions_run(workdir: Path, monitor_url: str) -> str:
        for db in finished_run.folder.glob("demo.db*"):
            shutil.copy(db, workdir / db.name)
        return finished_run.stdout.replace(
            f"http://127.0.0.1:{finished_run.monitor_port}/", f"{monitor_url}/"
        )

    monkeypatch.setattr(snapshot, "run_demo", the_sessions_run)
    readme = tmp_path / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    assert snapshot.main(["--out", str(tmp_path / "docs"), "--readme", str(readme)]) == 0

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
    # Each summary's monitor line, as sample.py prints it, its window cut off.
    link = "  monitor: http://127.0.0.1:8000/invocations/timeline?..."
    assert block.count(link) == 4, block
    assert "time_range" not in block
    # Everything outside the block is as it was.
    original = (ROOT / "README.md").read_text()
    assert text.split(snapshot.BEGIN)[0] == original.split(snapshot.BEGIN)[0]
    assert text.split(snapshot.END)[1] == original.split(snapshot.END)[1]
    assert processes_mentioning("snapshot-") == []
