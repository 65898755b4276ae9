"""sample.py end to end, as a user runs it: exit code, four summaries, the provider's log."""

from pathlib import Path

import pytest

from demo_runs import processes_mentioning, run_sample, summaries


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
    assert processes_mentioning(str(tmp_path)) == []


@pytest.mark.e2e
def test_bench_prints_its_figures(tmp_path: Path) -> None:
    """The benchmark is a command, not a timed test: check that it reports, not how fast."""
    # The smallest bench that prints every figure: one round, a scaled run of 6 accounts.
    result = run_sample(tmp_path, "--bench", "--rounds", "1", "--bench-accounts", "6", timeout=400)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    # The same rounds and scaled run, first on pynenc's ThreadRunner, then on the wake runner.
    assert out.index("##### thread runner #####") < out.index("##### wake runner #####")
    assert out.count("=== scaled run: 6 accounts x 4 ops, hold 0.1s ===") == 2
    assert out.count("scenario      median    floor  efficiency  runs") == 4
    assert "(wake runner)" in out
    # Each runner's rounds end in a distribution: min / typical / max per scenario and measure.
    assert out.count("=== 1 rounds: min / typical / max ===") == 2
    rows: dict[str, list[str]] = {}
    for line in out.splitlines():  # the first distribution's rows
        if line[:2] in ("A.", "B.", "C.", "D."):
            rows.setdefault(line[:2], line.split())
    # scenario, key, then calls, collisions, extra, dropped, deduped, late, unfinished
    assert rows["B."][2:4] == ["12/12/12", "0/0/0"]
    assert rows["C."][3] == "0/0/0" and rows["D."][3] == "0/0/0"
    assert all(row[8] == "0/0/0" for row in rows.values())
    table = out.split("=== thread vs wake: median elapsed (efficiency) ===")[1].splitlines()
    rows = [line for line in table if line[:2] in ("A.", "B.", "C.", "D.")]
    assert len(rows) == 8, table  # four scenarios, article-sized and scaled
    assert all(line.count("%") == 2 for line in rows)
    assert "whole run (in-process):" in out and "start-up" in out and "teardown" in out
    assert "worker peak memory:" in out and "MiB" in out
