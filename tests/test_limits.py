"""Up to N calls in flight per account, and a rate per account, across three real workers.

tests/limits_run.py runs F and G on workers sample.py starts, with the claim, and prints the
provider's counts of each run; the tests judge those counts, never a duration.
"""

import json
import subprocess
from pathlib import Path

import pytest

import tasks
from demo.processes import free_port
from demo.stack import ROOT
from helpers import user_env
from long_runs import WITH_REDIS

pytestmark = [pytest.mark.slow, pytest.mark.e2e]  # three workers, each scenario twice

SHORT = ("--no-chart", "--no-links", "--ready-timeout", "120", "--timeout", "60")


def limited_runs(
    tmp_path: Path, scenarios: str, *flags: str, uv_args: tuple[str, ...] = ()
) -> list[dict]:
    """Each run's counts, from limits_run.py on three claim workers; its exit code must be 0."""
    argv = ["uv", "run", *uv_args, "python", "tests/limits_run.py", scenarios]
    argv += ["--atomic-claim", "--workers", "3", "--rounds", "2", *SHORT, *flags]
    argv += ["--db", str(tmp_path / "demo.db"), "--port", str(free_port())]
    result = subprocess.run(
        argv, cwd=ROOT, env=user_env(tmp_path), capture_output=True, text=True, timeout=400
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def assert_every_call_ran(run: dict) -> None:
    assert run["applied"] == run["enqueued"] == 24, run
    assert (run["unfinished"], run["failed"], run["fenced"], run["broken"]) == (0, 0, 0, []), run
    # Anyone can recount the peak from the timeline's starts and ends: the same figure.
    assert run["recounted"] == run["peaks"], run


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_f_three_workers_reach_two_in_flight_per_account_and_never_three(
    tmp_path: Path, backend: str
) -> None:
    """The provider's own peak per account: 2 at some point in every run, never 3, and every
    call runs once. Checked by mutation: with the producer's admission counting one slot more
    than declared (AtomicClaim.admits comparing `len(holders) < slots + 1`), the provider
    counted 7 collisions (3 in flight) and this test failed on both backends. (The same
    off-by-one in decision.decide alone passed: only a key's holders reach the queue, so the
    count that matters is the one taken as a call is admitted or handed a slot.)"""
    flags = ("--backend", "redis") if backend == "redis" else ()
    uv_args = WITH_REDIS if backend == "redis" else ()
    runs = limited_runs(tmp_path, "slots", *flags, uv_args=uv_args)
    assert len(runs) == 2
    for run in runs:
        assert_every_call_ran(run)
        assert run["collisions"] == 0, run
        assert set(run["peaks"].values()) == {tasks.SLOTS}, run


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_g_three_workers_are_never_throttled_and_run_every_call(
    tmp_path: Path, backend: str
) -> None:
    """Five calls a second per account across three workers: the provider throttles none, and
    every call runs. Checked by mutation: with the rate check skipped (_rate_free_at answering
    None), the provider throttled 2 of the 24 calls on SQLite and 9 on Redis: this test failed
    on both."""
    flags = ("--backend", "redis") if backend == "redis" else ()
    uv_args = WITH_REDIS if backend == "redis" else ()
    runs = limited_runs(tmp_path, "rate", *flags, uv_args=uv_args)
    assert len(runs) == 2
    for run in runs:
        assert_every_call_ran(run)
        assert (run["throttled"], run["collisions"]) == (0, 0), run
        assert max(run["peaks"].values()) <= tasks.SLOTS, run


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_h_tiers_changed_mid_run_never_exceed_the_limit_in_force(
    tmp_path: Path, backend: str
) -> None:
    """Two gold accounts at 3, four plain at 1; mid-run plain1 raised to 2 and gold1 lowered
    to 1, in the claim and at the provider. The provider, judging each call against the quota
    in force, counts 0 collisions; every call runs once; plain1 reaches 2 in flight, and gold1
    runs calls under its lowered limit (the provider lowers it once the claim holds at most
    one). Checked by mutation: with `has_room` always True on both backends, gold1's
    hand-overs went on at 3, the provider's quota was lowered only after its last call
    started, and this test failed. (The operator lowering the provider first passed: the
    claim lowers a few milliseconds later, before any of gold1's calls ends.)"""
    flags = ("--backend", "redis") if backend == "redis" else ()
    uv_args = WITH_REDIS if backend == "redis" else ()
    runs = limited_runs(tmp_path, "tiers", *flags, uv_args=uv_args)
    assert len(runs) == 2
    for run in runs:
        assert run["applied"] == run["enqueued"] == 36, run
        assert (run["unfinished"], run["failed"], run["collisions"], run["broken"]) == (
            0,
            0,
            0,
            [],
        ), run
        assert run["peaks"]["plain1"] == 2 and run["peaks"]["plain2"] == 1, run
        slots, started = run["under_last_limit"]["gold1"]
        assert slots == 1 and started >= 1, run
        assert run["recounted"] == run["peaks"], run
