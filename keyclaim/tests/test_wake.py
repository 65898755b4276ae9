"""The pushed wake: a call queued for a free key wakes one worker, and a lost wake only delays.

keyclaim.notify: the call starts without the idle cadence passing, whatever process queued
it. Counted by the workers' own loops (keyclaim.wake logs them as it stops), never
timed: the idle cadence is set long, so a loop started by it shows as "idle"."""

from pathlib import Path

import pytest
from claimkit import Claim, Workers, free_port, unique
from pynenc.invocation.status import InvocationStatus as S
from test_redis_claim import redis_script
from wake_run import counted

SUCCESS = "success"


def test_a_call_for_a_free_key_wakes_its_worker_without_the_idle_cadence(
    claim: Claim, tmp_path: Path
) -> None:
    """One worker, its cadence 60 s: the call is claimed by a loop its notification started.
    Checked by mutation: without the producer's notify() in register_new_invocations, the
    call waited for the cadence and final() gave up at its deadline."""
    found = counted(claim, tmp_path, workers=1, calls=1, idle="60", drop=False)
    assert found["statuses"] == [SUCCESS]
    (looks,) = found["looks"]
    assert (looks.get("notified"), looks.get("idle", 0)) == (found["sent"], 0), looks


def test_a_call_handed_the_key_runs_in_the_thread_it_was_handed_from(
    claim: Claim, tmp_path: Path
) -> None:
    """Five calls for one key, one worker, its cadence 60 s: the first is claimed by a loop its
    notification started, and each of the other four, handed the key as the one before ends,
    is taken off the queue and run by that call's thread (keyclaim.handover), no loop woken
    for it. The first is held in flight until pynenc's own calls, run as the worker starts,
    have ended (their ends woke the loop, which then took a handed call first in 3 runs of
    10). Checked by mutation: with take_handed() waking the loop instead of taking, 0 were
    taken by a thread."""
    found = counted(claim, tmp_path, workers=1, calls=5, idle="60", one_key=True)
    assert found["statuses"] == [SUCCESS] * 5
    (looks,) = found["looks"]
    assert looks.get("taken by a thread that handed a key on") == 4, looks
    assert (looks.get("notified"), looks.get("idle", 0)) == (found["sent"], 0), looks


def test_a_thread_takes_the_oldest_call_so_a_handed_call_keeps_its_place(
    claim: Claim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One worker of one thread. A key's two calls, then three calls for free keys, while the
    first is held in flight: its end hands the key to the second, queued behind the three, and
    the thread takes the oldest call, as the loop would: the three run before it. Checked by
    mutation: with the thread taking the newest call off the queue (the one it handed the key
    to), that call ran second."""
    monkeypatch.setenv("PYNENC__CONFIGTHREADRUNNER__MAX_THREADS", "1")
    key, tasks, workers = unique(), claim.tasks, Workers(claim, tmp_path)
    try:
        workers.start(runner="wake", idle="60", dead_after="120", longest_call="10")
        with claim.provider.paused():
            first, handed = (tasks.call_keyed(key, op) for op in ("first", "handed"))
            claim.provider.wait_in_flight(key)
            free = [tasks.call_keyed(unique(), "free") for _ in range(3)]
        calls = [first, handed, *free]
        assert claim.final(*(c.invocation_id for c in calls), deadline=20) == [S.SUCCESS] * 5
    finally:
        workers.stop_all()

    def started(call: object) -> float:
        history = claim.app.state_backend.get_history(call.invocation_id)  # type: ignore[attr-defined]
        return min(e.timestamp for e in history if e.status_record.status is S.RUNNING)

    assert sorted(calls, key=started) == [first, *free, handed]


@pytest.mark.slow  # three workers' start
def test_one_notification_wakes_one_worker_of_three(claim: Claim, tmp_path: Path) -> None:
    """Six calls for six free keys, three workers: one loop started by a notification for each
    call queued (the six, and pynenc's recovery tasks the workers queue), not three (a herd),
    and none by the idle cadence. Checked by mutation: with a send to every worker's socket,
    20 loops were woken for 8 calls queued."""
    found = counted(claim, tmp_path, workers=3, calls=6, idle="60", drop=False)
    assert found["statuses"] == [SUCCESS] * 6
    assert sum(looks.get("notified", 0) for looks in found["looks"]) == found["sent"], found
    assert sum(looks.get("idle", 0) for looks in found["looks"]) == 0, found["looks"]


@pytest.mark.slow  # the idle cadence, 2 s, passes at least once
def test_a_lost_notification_only_delays_the_call(claim: Claim, tmp_path: Path) -> None:
    """A call open to merging for 0.3 s waits off the queue; its producer's notification (its
    due time) is lost: the worker releases it at its idle cadence, the next sweep being 30 s
    away. Checked by mutation: without release_due() after an idle wait, final() gave up at
    its deadline, here and on Redis."""
    found = counted(claim, tmp_path, workers=1, calls=1, idle="2", drop=True)
    assert found["statuses"] == [SUCCESS]
    (looks,) = found["looks"]
    assert looks.get("notified", 0) == found["sent"] and looks["idle"] >= 1, looks


@pytest.mark.slow  # a second environment's start
@pytest.mark.e2e
def test_on_redis_one_notification_wakes_one_worker_and_a_lost_one_only_delays(
    redis_url: str, tmp_path: Path
) -> None:
    """The same on Redis (a list and BLPOP): three workers, six calls, one wake for each
    call queued, no idle look; then, with the producer's notifications lost, a worker still
    runs its call at its idle cadence. Checked by mutation: without any notify(), 0 of 8
    wakes were counted (and on SQLite, final() gave up at its deadline)."""
    found = redis_script("wake_run.py", redis_url, str(tmp_path), "3", "6", "60")
    assert found["statuses"] == [SUCCESS] * 6
    assert sum(looks.get("notified", 0) for looks in found["looks"]) == found["sent"], found
    assert sum(looks.get("idle", 0) for looks in found["looks"]) == 0, found["looks"]
    lost = redis_script("wake_run.py", redis_url, str(tmp_path / "lost"), "1", "1", "2", "drop")
    assert lost["statuses"] == [SUCCESS]
    (looks,) = lost["looks"]
    assert looks.get("notified", 0) == lost["sent"] and looks["idle"] >= 1, looks


@pytest.mark.slow  # a second environment's start
@pytest.mark.e2e
def test_on_redis_the_listener_outlives_a_restart_of_its_redis(tmp_path: Path) -> None:
    """Redis killed and started again under a wake worker whose cadence is a minute: its
    listener waits the outage out, and the next call still wakes it. Checked by mutation:
    with the listener's except clause removed, its thread died with the connection, never
    saying so, and the script gave up waiting for it to notice the outage."""
    found = redis_script("redis_wake_restart.py", str(free_port()), str(tmp_path))
    assert found["status"] == SUCCESS
    assert found["looks"].get("notified", 0) >= 1 and found["looks"].get("idle", 0) == 0, found
