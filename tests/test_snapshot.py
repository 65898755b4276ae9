"""The README's picture is regenerable: the script draws a real run through the real monitor."""

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
    # 12 unsafe, 12 keyed and 12 dropped-or-run invocations, and 3 refreshes (24 merged).
    assert len(monitor.invocation_ids(svg)) == 39
    text = readme.read_text()
    block = text.split(snapshot.BEGIN, 1)[1].split(snapshot.END, 1)[0]
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
