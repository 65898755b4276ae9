"""The wake runner: pynenc's ThreadRunner, started again the moment one of its calls ends."""

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from pynenc.invocation.status import InvocationStatus as S

import tasks
from demo import pynenc_versions, wake_runner
from demo.processes import wait_until
from demo.provider import Provider
from helpers import (
    WAIT,
    account,
    history,
    paused,
    process_state,
    processes_mentioning,
    run_sample,
    status_of,
    summaries,
    unique,
    wait_in_flight,
)

WAKE = {"DEMO_RUNNER": "wake"}


@pytest.mark.e2e
def test_the_wake_runner_keeps_every_guarantee_with_the_claim_and_three_workers(
    tmp_path: Path,
) -> None:
    """One worker on the wake runner runs in the --bench test (SQLite) and in
    tests/test_scale.py's private-Redis test."""
    extra = ("--atomic-claim", "--workers", "3")
    result = run_sample(tmp_path, "--runner", "wake", "--no-chart", *extra, timeout=400)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "(wake runner)" in out
    found = summaries(out)
    assert (found["B"]["calls"], found["B"]["collisions"]) == (12, 0)
    assert found["C"]["collisions"] == found["D"]["collisions"] == 0
    assert processes_mentioning(str(tmp_path)) == []


def test_sigterm_stops_the_wake_runner_and_leaves_nothing_running(
    live_api: Provider, start_worker: Callable
) -> None:
    live_api.reset("wake runner test", hold=0.0)
    worker = start_worker(WAKE)
    acct = unique()
    with paused(live_api):
        call = tasks.call_keyed(acct, "fetch_profile")
        wait_in_flight(live_api, acct)
        os.killpg(worker.proc.pid, signal.SIGTERM)
    # On SIGTERM the runner stops taking work and waits for its call's thread to return.
    assert worker.proc.wait(WAIT) is not None
    assert process_state(worker.proc.pid) in (None, "Z")
    # It left nothing RUNNING: the call finished, or was given back (KILLED, then REROUTED).
    left = status_of(call.invocation_id)
    assert left is S.SUCCESS or left is S.REROUTED, history(call.invocation_id)
    if left is S.REROUTED:
        start_worker(WAKE)
        wait_until(lambda: status_of(call.invocation_id) == S.SUCCESS, WAIT, "the call to finish")
    assert account(live_api, acct)["collisions"] == 0


def test_the_wake_runner_refuses_an_untested_pynenc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pynenc_versions, "version", lambda name: "0.5.0")
    with pytest.raises(pynenc_versions.UntestedVersion, match="wake runner .*pynenc 0.5.0"):
        wake_runner.config("sqlite", idle=0.2, drain_deadline=12.0)
