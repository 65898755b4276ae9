"""The demo end to end, as a user runs sample.py: exit code, four summaries, the provider's log.

The longer runs (the benchmark, Redis, several workers) are in tests/test_scale.py.
"""

import pytest

from helpers import FinishedRun, summaries


@pytest.mark.e2e
def test_sample_runs_all_four_scenarios_and_keeps_its_promises(finished_run: FinishedRun) -> None:
    out = finished_run.stdout
    assert finished_run.returncode == 0, out + finished_run.stderr
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
    assert finished_run.leftovers == []


@pytest.mark.e2e
def test_the_articles_run_decides_and_stores_with_pynencs_own_classes(
    finished_run: FinishedRun,
) -> None:
    """What the article shows is pynenc as shipped: its worker runs pynenc's ThreadRunner (with
    a start hook that says so) on pynenc's own orchestrator, broker, state backend and trigger.
    Checked by mutation: with kept connections selected without the claim (as before), the
    worker's line names KeptSQLiteOrchestrator and this test fails."""
    (log,) = (finished_run.folder / "logs").glob("worker-*.log")
    (said,) = [line for line in log.read_text().splitlines() if line.startswith("worker:")]
    assert ", ThreadRunner on pynenc's own classes, atomic claim off," in said, said


@pytest.mark.e2e
def test_the_monitor_hint_starts_it_where_the_links_point(finished_run: FinishedRun) -> None:
    """The run's links point at --monitor-url; the command it prints to start the monitor
    must answer there. Checked by mutation: with the hint's `pynenc monitor` alone, as it was,
    the monitor it started answered on port 8000, where no link pointed, and this fails."""
    (hint,) = [line for line in finished_run.stdout.splitlines() if "start it with:" in line]
    assert hint.endswith(f"pynenc monitor --host 127.0.0.1 --port {finished_run.monitor_port}")
