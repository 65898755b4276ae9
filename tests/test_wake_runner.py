"""The wake runner: pynenc's ThreadRunner, started again the moment one of its calls ends.

With the claim and three workers it runs in tests/test_scale.py; on Redis there too, and on
one SQLite worker in the bench test.
"""

import os
import signal
from collections.abc import Callable

from pynenc.invocation.status import InvocationStatus as S

import tasks
from demo.processes import wait_until
from demo.provider import Provider
from helpers import WAIT, account, history, paused, process_state, status_of, unique, wait_in_flight

WAKE = {"DEMO_RUNNER": "wake"}


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
