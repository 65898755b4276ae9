"""A store that blinks is never a verdict, and a worker rides out its Redis going away.

A worker's holder check meets a store that does not answer (claimapp.blink, injected, not
timed) as it stores a call's result; on Redis, the worker's redis-server is killed and started
again empty on the same port (redis_outage.py, in an environment with the Redis plugin).
"""

import pytest
from claimkit import WAIT, Claim, Workers, free_port, unique, wait_until
from pynenc.invocation.status import InvocationStatus as S
from test_redis_claim import redis_script

pytestmark = pytest.mark.slow  # real workers; the Redis one waits out a restart
ONCE = {"calls": 1, "applied": 1, "collisions": 0, "fenced": 0}


def test_a_locked_database_in_the_results_holder_check_does_not_store_failed(
    claim: Claim, workers: Workers
) -> None:
    """The holder check raises sqlite3.OperationalError("database is locked") on its first 3
    tries: the result is stored once it answers, SUCCESS, applied once. Checked by mutation:
    with set_invocation_result storing unretried (`if self._still_holds(...): write(...)`),
    the error reached pynenc's `except Exception` and the call ended FAILED."""
    worker = workers.start(blinks="3")
    acct = unique()
    call = claim.tasks.call_keyed(acct, "op1")
    assert claim.final(call.invocation_id) == [S.SUCCESS]
    assert call.result == "ok"
    assert S.FAILED not in claim.settled_history(call.invocation_id)
    assert claim.provider.counts(acct) == ONCE
    wait_until(lambda: worker.logged("store answers again"), WAIT, "the store's answer")
    log = worker.log_path.read_text()
    assert log.count("store unreachable") == 1 and "Traceback" not in log, log


def test_a_result_the_store_never_took_is_run_again_not_lost(
    claim: Claim, workers: Workers
) -> None:
    """The holder check of the call's first claim never answers: past the deadline (the 3 s
    dead-after window) the call is left RUNNING, and the live worker's loop reroutes it
    (KILLED, REROUTED); run again under a new claim, it ends SUCCESS, never FAILED. Checked by
    mutation: without `_reroute_unstored` in get_invocations_to_run, it stayed RUNNING under
    the live worker and never ended."""
    worker = workers.start(blinks="-1", dead_after="3", longest_call="2")
    acct = unique()
    call = claim.tasks.call_keyed(acct, "op1")
    assert claim.final(call.invocation_id, deadline=WAIT) == [S.SUCCESS]
    seen = claim.settled_history(call.invocation_id)
    assert S.KILLED in seen and S.FAILED not in seen, seen
    assert claim.provider.counts(acct)["calls"] == 2
    assert worker.logged("its outcome is not stored; it is run again")


@pytest.mark.e2e
def test_on_redis_a_worker_rides_out_a_timeout_and_a_restart(tmp_path) -> None:
    """redis_outage.py: a Redis worker whose holder check times out twice stores SUCCESS; then
    its redis-server is killed and a new, empty one started on the port: the worker is alive,
    runs a call enqueued after it, and logs one line each way, no traceback per try; killed
    again, a SIGTERM stops it (the drain does not hang on the store). Checked by mutation: with
    DrainingThreadRunner._answered re-raising every error, the worker exited at the kill and
    never logged its line (the script gave up waiting); with set_invocation_result storing
    unretried, the first call ended FAILED."""
    port = str(free_port())
    found = redis_script("redis_outage.py", port, str(tmp_path), timeout=240)
    assert found["blinked"] == found["after_restart"] == ["success", ONCE]
    assert found["alive"] is True and found["stopped"] == 0
    assert (found["unreachable"], found["back"]) == (2, 1), found["log"]
    assert found["tracebacks"] <= 1, found["log"]
