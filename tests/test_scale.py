"""Beyond the article's run: the benchmark, the Redis backend, and several workers, end to end.

The long runs (tests/long_runs.py) start as the session begins and run beside the other tests;
the tests here read what they printed and left behind.
"""

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from demo import redis_server
from demo.processes import stop_children
from demo.stack import ROOT
from helpers import processes_mentioning, run_sample, summaries
from long_runs import WITH_REDIS, LongRun, LongRuns

pytestmark = pytest.mark.slow  # the long runs: the bench, Redis, several workers


@pytest.fixture(scope="module")
def runs(long_runs: LongRuns | None) -> dict[str, LongRun]:
    assert long_runs is not None, "conftest.py starts the long runs for the tests that read them"
    return long_runs.results()


def the_run(runs: dict[str, LongRun], name: str) -> LongRun:
    if name not in runs:
        if os.environ.get("CI"):
            pytest.fail("redis-server is missing in CI: .ci/run should have installed it")
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    return runs[name]


def redis_keys(url: str) -> int:
    host, port = url.removeprefix("redis://").split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"DBSIZE\r\n")
        return int(sock.recv(64).decode().strip().lstrip(":"))


@pytest.mark.e2e
def test_bench_prints_its_figures(runs: dict[str, LongRun]) -> None:
    """The benchmark is a command, not a timed test: check that it reports, not how fast."""
    result = runs["bench"].result
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    # The same rounds and scaled run, first on pynenc's ThreadRunner, then on the wake runner.
    assert out.index("##### thread runner #####") < out.index("##### wake runner #####")
    assert out.count("=== scaled run: 6 accounts x 4 ops, hold 0.1s ===") == 2
    # 4: the rounds and the scaled run on each runner; 6 more: B (with F and G on the claim's
    # sides) and scaled B on each side of the last comparison; 4 more: the same on 3 workers,
    # on the claim's sides.
    assert out.count("scenario      median    floor  efficiency  runs") == 14
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
    table = out.split("=== thread vs wake: median elapsed (efficiency) ===")[1]
    table = table.split("\n\n")[0].splitlines()  # up to the next blank line
    rows = [line for line in table if line[:2] in ("A.", "B.", "C.", "D.")]
    assert len(rows) == 8, table  # four scenarios, at the rounds' size and scaled
    assert all(line.count("%") == 2 for line in rows)
    assert "whole run (from the command):" in out and "start-up" in out and "teardown" in out
    assert "worker peak memory:" in out and "MiB" in out
    # B, scaled B and E on stock pynenc, on the claim with pynenc's SQLite connections and on
    # the claim with kept ones; F and G on the claim's sides.
    table = out.split("=== stock pynenc vs the claim (account lines) on pynenc's SQLite")[1]
    rows = {line[:40].strip(): line[40:].split() for line in table.splitlines()[2:]}
    assert len(rows["B. keyed"]) == len(rows["B. keyed, scaled"]) == 6  # 3 x "1.23s (45%)"
    assert rows["F. slots"][0] == rows["G. rate"][0] == "-"  # limits are the claim's
    assert len(rows["F. slots"]) == len(rows["G. rate"]) == 5
    # With the lines, the busy account's calls run in order, 3 status writes each, no reroute.
    for side in (1, 2):
        assert rows["E, 20 backlog: in enqueue order"][side] == "yes"
        assert rows["E, 20 backlog: status writes per call"][side] == "3.0"
        assert rows["E, 20 backlog: REROUTED per call"][side] == "0.0"
    assert "E, 20 backlog: quiet wait, longest" in rows
    # The rest of the targets: B and D on 3 workers with the claim (workers without it collide),
    # D's calls over its 2 rounds on each side, the start-up, and B at 4 accounts on 4 workers.
    table = out.split("=== the rest of the targets, wake runner ===")[1]
    rows = {line[:40].strip(): line[40:].split() for line in table.splitlines()[2:5]}
    assert rows["B. keyed, 3 workers"][0] == rows["D: the same, 3 workers"][0] == "-"
    assert len(rows["B. keyed, 3 workers"]) == 5  # "-", then 2 x "1.23s (45%)"
    for cell in rows["D: calls in 2 rounds, min/typ/max"] + rows["D: the same, 3 workers"][1:]:
        low, typical, high = map(int, cell.split("/"))
        assert 3 <= low <= typical <= high, cell  # the 3 accounts' refreshes, at least once each
    assert re.search(r"^start-up of .*, 1 runs: [\d.]+/[\d.]+/[\d.]+s ", table, re.M), table
    shape = "B at 4 accounts x 4, hold 0.05s, 4 workers"
    for backend in ("sqlite", "redis"):
        stock = rf"^{shape}, {backend} stock pynenc: [\d.]+s \(\d+%\)(, \d+ collisions)?$"
        assert re.search(stock, table, re.M), table  # stock pynenc's workers may collide
        for side in ("claim, wake runner", "claim, enqueued as one batch"):
            claim = rf"^{shape}, {backend} {side}: [\d.]+s \(\d+%\), CPU per call, ms: "
            assert re.search(claim + r".*; all [\d.]+$", table, re.M), table


@pytest.mark.e2e
def test_redis_backend_with_one_worker_keeps_the_key_guarantees(runs: dict[str, LongRun]) -> None:
    """On the wake runner, so the same run shows that runner keeps its promises on Redis."""
    run = the_run(runs, "redis, one worker")
    result = run.result
    assert result.returncode == 0, result.stdout + result.stderr
    assert "(wake runner)" in result.stdout
    found = summaries(result.stdout)
    assert (found["B"]["calls"], found["B"]["collisions"]) == (12, 0)
    assert found["C"]["collisions"] == 0
    assert found["C"]["calls"] + found["C"]["dropped"] == 12
    assert found["D"]["collisions"] == 0
    assert redis_keys(run.redis_url) > 0, "the run should have kept its state in this Redis"
    assert not (run.folder / "demo.db").exists(), "Redis runs must not touch SQLite"


@pytest.mark.e2e
def test_redis_backend_without_the_plugin_says_how_to_get_it(tmp_path: Path) -> None:
    result = run_sample(tmp_path, "--backend", "redis", uv_args=("--isolated",), timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "uv run --isolated --group redis python sample.py --backend redis" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.e2e
def test_several_workers_finish_with_a_report_whatever_pynenc_does(
    runs: dict[str, LongRun],
) -> None:
    """Per-key control races across runner processes in pynenc 0.3.1 (see README).

    Whether this run shows a collision, a crashed runner or nothing, it must end within
    its deadline, print the table, and exit 0 only if every guarantee held.
    """
    run = runs["three workers"]
    out = run.result.stdout
    assert run.result.returncode in (0, 1), out + run.result.stderr
    assert "=== 2 rounds: min / typical / max ===" in out, out + run.result.stderr
    verdict = "OK: every guarantee held" if run.result.returncode == 0 else "FAILED: "
    assert verdict in out, out
    assert processes_mentioning(str(run.folder)) == []


@pytest.mark.e2e
def test_atomic_claim_keeps_every_guarantee_with_three_workers(runs: dict[str, LongRun]) -> None:
    """The claim closes the race: with it, several workers must keep every promise, always."""
    run = runs["three workers, claim"]
    out = run.result.stdout
    assert run.result.returncode == 0, out + run.result.stderr
    assert "--- sqlite, 3 worker(s) (wake runner); atomic claim on, dead after 15s" in out
    assert "totals: 0 collisions under KEYS (B 0, C 0, D 0)" in out, out
    assert "worker crashes" not in out
    assert processes_mentioning(str(run.folder)) == []


@pytest.mark.e2e
def test_atomic_claim_on_redis_with_workers_on_separate_hosts(runs: dict[str, LongRun]) -> None:
    """On a Redis of sample.py's own: it starts one when REDIS_URL is not set, and stops it."""
    run = the_run(runs, "redis, claim, hosts")
    out = run.result.stdout
    assert run.result.returncode == 0, out + run.result.stderr
    assert "3 worker(s), each from its own copy of the project" in out
    hosts = sorted(p.name for p in (run.folder / "logs" / "hosts").iterdir())
    assert hosts == ["host-1", "host-2", "host-3"]
    found = summaries(out)
    assert (found["B"]["calls"], found["B"]["collisions"]) == (12, 0)
    assert found["C"]["collisions"] == found["D"]["collisions"] == 0
    assert (run.folder / "logs" / "redis.log").exists()
    assert processes_mentioning(str(run.folder)) == []


@pytest.mark.e2e
def test_atomic_claim_refuses_a_pynenc_it_was_not_tested_with(tmp_path: Path) -> None:
    result = run_sample(
        tmp_path,
        "--atomic-claim",
        uv_args=("--isolated", "--with", "pynenc[monitor]==0.3.0"),
        timeout=300,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == (
        "sample.py: --atomic-claim: atomic claim (sqlite): tested with pynenc 0.3.1 or "
        "pynenc 0.4.0; this environment has pynenc 0.3.0"
    ), result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "logs").exists(), "nothing may start before the refusal"


@pytest.mark.e2e
def test_the_readmes_redis_commands_leave_the_project_environment_alone() -> None:
    """pynenc imports every installed plugin at start-up: the plugin must not leak into .venv.

    Every Redis command the README and docs/ show runs in an environment of its own."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    lines = [line for page in pages for line in page.read_text().splitlines()]
    commands = [line for line in lines if line.startswith("uv run") and "redis" in line]
    assert commands, "the README and docs/ should show how to run on Redis"
    assert all(c.startswith("uv run --isolated --group redis ") for c in commands), commands

    plugin = "import pynenc_redis"
    with_group = subprocess.run(
        ["uv", "run", *WITH_REDIS, "python", "-c", plugin], cwd=ROOT, capture_output=True
    )
    assert with_group.returncode == 0, with_group.stderr
    project = subprocess.run(
        ["uv", "run", "python", "-c", plugin], cwd=ROOT, capture_output=True, text=True
    )
    assert project.returncode != 0 and "No module named 'pynenc_redis'" in project.stderr


@pytest.mark.e2e
def test_atomic_claim_refuses_a_redis_without_transactions(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None and not os.environ.get("CI"):
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    log = tmp_path / "redis" / "redis.log"
    child, url = redis_server.start_private(log, 30, extra=("--rename-command", "MULTI", ""))
    try:
        result = run_sample(
            tmp_path,
            *("--backend", "redis", "--atomic-claim"),
            uv_args=WITH_REDIS,
            env={"REDIS_URL": url},
            timeout=300,
        )
    finally:
        stop_children([child])
    assert result.returncode == 2, result.stdout + result.stderr
    # uv may report what it installed first; the demo's own word is one line.
    ours = [line for line in result.stderr.splitlines() if line.startswith("sample.py")]
    assert len(ours) == 1 and "refuses WATCH/MULTI/EXEC" in ours[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "logs" / "api.log").exists(), "no API or worker may start"
    assert processes_mentioning(str(tmp_path)) == []
