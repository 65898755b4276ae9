"""The fleet: every worker records itself, with no runner of the user's own to write.

A process whose settings differ from a live worker's is refused in one line naming both."""

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from claimkit import HERE, WAIT, Claim, Worker, unique, wait_until
from pynenc import PynencBuilder

import keyclaim
from keyclaim import fleet


def records(app: object) -> dict[str, dict]:
    """The fleet's records in the app's store, by runner id."""
    return {k: json.loads(v) for k, v in fleet.FleetStore(app).records().items()}


@contextmanager
def worker(at: Claim, log: Path, **settings: str) -> Iterator[subprocess.Popen]:
    """`pynenc --app claimapp.app runner start` on the claim's store, in a group of its own,
    stopped (then killed past the deadline) on every way out. Not waited for: a refused one
    exits before it beats."""
    argv = [sys.executable, "-m", "pynenc", "--app", "claimapp.app", "runner", "start"]
    env = {**os.environ, **at.environment(**settings), "PYTHONUNBUFFERED": "1"}
    out = log.open("w")
    proc = subprocess.Popen(
        argv, cwd=HERE, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        yield proc
    finally:
        Worker(proc, log, log=out).stop()


def recorded(claim: Claim, proc: subprocess.Popen) -> dict:
    """The worker's record, once it is in the store."""

    def found() -> dict | None:
        assert proc.poll() is None, "the worker exited"
        return next((r for r in records(claim.app).values() if r["pid"] == proc.pid), None)

    return wait_until(found, WAIT, f"pid {proc.pid}'s fleet record")


def test_pynencs_own_runner_joins_the_fleet_with_its_first_beat_under_the_claim(
    claim: Claim, tmp_path: Path
) -> None:
    """install(runner=None) keeps pynenc's ThreadRunner, which knows nothing of the fleet: the
    claim's orchestrator records it as it first beats, and a worker without the claim is then
    refused (exit 1, the one line naming the live worker). Checked by mutation: without the
    join in ClaimRecovery.register_runner_heartbeats, no record appeared and this test failed."""
    with worker(claim, tmp_path / "pynenc.log", runner="pynenc") as first:
        assert recorded(claim, first)["settings"]["atomic claim"] == "on"
        with worker(claim, tmp_path / "off.log", claim="0") as second:
            assert second.wait(WAIT) == 1
        said = (tmp_path / "off.log").read_text()
        assert f"pid {first.pid}" in said and "atomic claim off" in said, said


def test_keyclaims_runner_without_the_claim_records_itself_as_off(tmp_path: Path) -> None:
    """A draining runner selected alone (use_runner) joins as it starts, claim or not: the
    record a worker with the claim is refused by. Checked by mutation: without the join in
    DrainingThreadRunner._on_start, the store held no record and this test failed."""
    builder = PynencBuilder().app_id(unique("fleet")).sqlite(str(tmp_path / "off.db"))
    app = keyclaim.use_runner(builder.thread_runner(max_threads=2), "drain").build()
    app.runner._on_start()
    ((runner_id, record),) = records(app).items()
    assert runner_id == app.runner.runner_id
    assert record["settings"] == {"atomic claim": "off"} and record["pid"] == os.getpid()


def test_a_producer_with_the_claim_is_refused_at_its_first_call_beside_a_worker_without_it(
    claim: Claim, tmp_path: Path
) -> None:
    """The producer would park calls for a busy key in lines no worker hands on. Checked by
    mutation: without the check in AtomicClaim.register_new_invocations, the call was
    registered and this test failed."""
    with worker(claim, tmp_path / "off.log", claim="0") as off:
        assert recorded(claim, off)["settings"] == {"atomic claim": "off"}
        with pytest.raises(
            keyclaim.Refused, match=f"pid {off.pid} on .*: atomic claim off"
        ) as refused:
            claim.tasks.call_keyed(unique(), "op1")
        assert "\n" not in str(refused.value)
