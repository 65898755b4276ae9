"""sample.py end to end, as a user runs it: exit code, four summaries, the provider's log."""

import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT
from processes import free_port

SUMMARY = re.compile(
    r"  (?P<enqueued>\d+) enqueued -> (?P<calls>\d+) calls"
    r"(?: \((?P<dropped>\d+) dropped\))?(?: \((?P<deduped>\d+) deduped\))?"
    r", (?P<collisions>\d+) collisions, [\d.]+s \(floor [\d.]+s, \d+%\)"
)


def run_sample(tmp_path: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    argv = ["uv", "run", "python", "sample.py", "--port", str(free_port())]
    argv += ["--db", str(tmp_path / "demo.db"), *args]
    env_overrides = {"DEMO_LOG_DIR": str(tmp_path / "logs"), "NO_COLOR": "1"}
    return subprocess.run(
        argv,
        cwd=ROOT,
        env={**os.environ, **env_overrides},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def summaries(stdout: str) -> dict[str, dict[str, int]]:
    found: dict[str, dict[str, int]] = {}
    letter = None
    for line in stdout.splitlines():
        if m := re.match(r"=== ([ABCD])\. ", line):
            letter = m.group(1)
        elif (m := SUMMARY.fullmatch(line)) and letter:
            found[letter] = {k: int(v or 0) for k, v in m.groupdict().items()}
            letter = None
    return found


@pytest.mark.e2e
def test_sample_runs_all_four_scenarios_and_keeps_its_promises(tmp_path: Path) -> None:
    result = run_sample(tmp_path)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    found = summaries(out)
    assert sorted(found) == ["A", "B", "C", "D"], out

    a, b, c, d = (found[k] for k in "ABCD")
    assert (a["enqueued"], a["calls"]) == (12, 12)
    assert a["collisions"] > 0, "without control, same-account calls should overlap"
    assert (b["enqueued"], b["calls"], b["collisions"]) == (12, 12, 0)
    assert (c["enqueued"], c["collisions"]) == (12, 0)
    assert c["calls"] + c["dropped"] == 12 and c["dropped"] > 0
    assert (d["enqueued"], d["collisions"]) == (24, 0)
    assert d["calls"] + d["deduped"] == 24 and d["deduped"] > 0

    # The provider's own call log follows, one reset marker per scenario.
    assert out.count("--- reset @ ") == 4, out
    assert "OK: every guarantee held" in out
