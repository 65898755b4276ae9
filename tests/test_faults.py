"""The sample's provider fences a late call and replays a repeated one, with real workers.

The claim's own fault tests (a deploy's SIGTERM, SIGSTOP, SIGKILL, the drain's beats) live
beside it, in keyclaim/tests/test_worker_faults.py; these are the provider's side: a held link
(helpers.HeldLink) keeps a worker's call on its way until a newer one has arrived, and a call
cut by a fault and applied is answered from the provider's store for its Idempotency-Key when
its invocation runs again. The windows are short (a call times out after 2 s, a silent runner
is dead after 3 s).
"""

import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
from pynenc.invocation.status import InvocationStatus as S

import tasks
from demo.processes import Child, wait_until
from demo.provider import Provider
from demo.stack import ROOT
from helpers import (
    WAIT,
    HeldLink,
    account,
    calls_for,
    counts,
    paused,
    settled_history,
    status_of,
    unique,
    wait_in_flight,
    write_lock_held,
)
from long_runs import WITH_REDIS

pytestmark = pytest.mark.slow  # real workers, held links and short windows

SHORT = {"DEMO_ATOMIC_CLAIM": "1", "DEMO_DEAD_AFTER": "3", "DEMO_CALL_TIMEOUT": "2"}


def holder_pid(invocation_id: str) -> int:
    """The process of the runner that holds an invocation now."""
    record = tasks.app.orchestrator.get_invocation_status_record(invocation_id)
    context = tasks.app.state_backend.get_runner_context(record.runner_id)
    assert context is not None, f"no runner context for {record}"
    return context.pid


def logged(worker: Child, text: str) -> bool:
    """Whether the worker's whole log so far holds text."""
    worker.log.flush()
    return text in worker.log_path.read_text(errors="replace")


def stop_between_writes(worker: Child) -> None:
    """SIGSTOP the worker at a moment it holds no write lock on the database. Stopped inside a
    write, it would stop every worker's writes with it: SQLite's limit, not the claim's
    (docs/faults.md, what it does not cover). Caught there, it is resumed and stopped again."""
    process = psutil.Process(worker.proc.pid)

    def stopped_between_writes() -> bool:
        os.kill(worker.proc.pid, signal.SIGSTOP)
        wait_until(lambda: process.status() == psutil.STATUS_STOPPED, WAIT, "the stop")
        if not write_lock_held(tasks.app.orchestrator.sqlite_db_path):
            return True
        os.kill(worker.proc.pid, signal.SIGCONT)
        return False

    wait_until(stopped_between_writes, WAIT, "a stop outside the worker's writes")


def final(*invocation_ids: str) -> list[S]:
    return [
        wait_until(lambda i=i: (s := status_of(i)).is_final() and s, 2 * WAIT, f"{i} to finish")
        for i in invocation_ids
    ]


def test_a_call_that_reaches_the_provider_after_a_newer_claim_is_fenced_there(
    claim_app: Provider, start_worker: Callable
) -> None:
    """The holder's request is held on its way to the provider (a slow network), and the holder
    is stopped: after the window the other worker recovers the call and sends it with a newer
    token. The held request then arrives, older than the newest token the provider has seen
    for the account: it is refused as it arrives (fenced, not applied, not a collision), and
    the woken holder's outcome is not stored. Checked by mutation: without the late-arrival
    branch of `fences.admit` (stand_in/fences.py), the late call is counted as a collision and
    nothing is fenced."""
    claim_app.reset("fault: late arrival", hold=0.0)
    acct = unique()
    with HeldLink(urlsplit(claim_app.base_url).port or 0) as link, paused(claim_app):
        late = start_worker({**SHORT, "DEMO_API_PORT": str(link.port)})
        call = tasks.call_keyed(acct, "op1")
        wait_until(link.held.is_set, WAIT, "the holder's request to be held on its way")
        assert holder_pid(call.invocation_id) == late.proc.pid
        stop_between_writes(late)
        try:
            start_worker(SHORT)
            # After the window: the call recovered and sent again, with a newer token.
            wait_in_flight(claim_app, acct)
            link.release()
            wait_until(lambda: account(claim_app, acct)["calls"] == 2, WAIT, "the late call")
        finally:
            claim_app.request("POST", "/resume")
            os.kill(late.proc.pid, signal.SIGCONT)
    assert final(call.invocation_id) == [S.SUCCESS]
    assert call.result == "ok"
    wait_until(lambda: logged(late, "outlived its claim"), WAIT, "the late holder's outcome")
    assert account(claim_app, acct) == counts(calls=2, fenced=1)
    applied, refused = sorted(calls_for(claim_app, acct), key=lambda c: c["start"])
    assert refused["token"] < applied["token"], (applied, refused)
    assert refused["fenced"] and not applied["fenced"], (applied, refused)
    seen = settled_history(call.invocation_id)
    assert seen.count(S.SUCCESS) == 1 and S.RUNNING_RECOVERY in seen, seen


def applied_per_op(provider: Provider, acct: str) -> dict[str, int]:
    """How many calls the provider applied for each op: not fenced, replayed or refused (409)."""
    applied: dict[str, int] = {}
    for c in calls_for(provider, acct):
        applied[c["op"]] = applied.get(c["op"], 0) + (
            not (c["fenced"] or c["replayed"] or c["conflict"])
        )
    return applied


def kill_holder(worker: Child) -> None:
    os.killpg(worker.proc.pid, signal.SIGKILL)
    worker.proc.wait(WAIT)


@pytest.mark.parametrize("fault", ["SIGKILL mid-call", "SIGSTOP past the window"])
def test_a_cut_call_that_was_applied_is_replayed_when_its_invocation_runs_again(
    claim_app: Provider, start_worker: Callable, fault: str
) -> None:
    """The holder is killed, or stopped past the window, mid-call; the provider then finishes
    the cut call, applied. After the window the other worker recovers the invocation and calls
    again, with a newer token and the same Idempotency-Key, the invocation's id: the provider
    answers from its store, and applies nothing. Each op is applied exactly once, the recovered
    call is replayed (not fenced: the same invocation, not an older claim), and the account's
    next call runs after it. Checked by mutation: with the key dropped from tasks.py's `_hit`,
    op1 was applied twice, nothing was replayed, and this test failed."""
    acct = unique()
    # Both workers are up before the call: one started while the call is held could take
    # longer than the call's 2 s timeout to boot on a loaded machine, and the call would fail.
    workers = [start_worker(SHORT), start_worker(SHORT)]
    with paused(claim_app):
        first = tasks.call_keyed(acct, "op1")
        wait_in_flight(claim_app, acct)
        second = tasks.call_keyed(acct, "op2")
        (holder,) = [w for w in workers if w.proc.pid == holder_pid(first.invocation_id)]
        if fault == "SIGKILL mid-call":
            kill_holder(holder)
        else:
            stop_between_writes(holder)
    try:
        # The cut call ends, applied, before the window runs out; then the invocation runs again.
        wait_in_flight(claim_app, acct, 0)
        assert account(claim_app, acct)["calls"] == 1
        assert final(first.invocation_id, second.invocation_id) == [S.SUCCESS, S.SUCCESS]
    finally:
        if holder.proc.poll() is None:
            os.kill(holder.proc.pid, signal.SIGCONT)
    assert first.result == second.result == "ok"
    assert applied_per_op(claim_app, acct) == {"op1": 1, "op2": 1}
    seen = account(claim_app, acct)
    assert (seen["replayed"], seen["fenced"], seen["conflicts"]) == (1, 0, 0), seen
    assert seen["collisions"] == 0, seen
    calls = calls_for(claim_app, acct)
    assert [(c["op"], c["replayed"]) for c in calls] == [
        ("op1", False),
        ("op1", True),
        ("op2", False),
    ]
    assert calls[0]["key"] == calls[1]["key"] == first.invocation_id
    assert calls[1]["token"] > calls[0]["token"]  # the recovered claim's, newer
    assert S.RUNNING_RECOVERY in settled_history(first.invocation_id)
    if fault == "SIGSTOP past the window":
        wait_until(lambda: logged(holder, "outlived its claim"), WAIT, "the woken holder's outcome")


HARNESS_FAULTS = ("SIGKILL mid-call", "SIGSTOP past the window")


def harness(backend: str, faults: tuple[str, ...], tmp_path: Path) -> dict[str, dict[str, int]]:
    """`python -m tools.faults`, as docs/faults.md runs it, one run of each fault: its rows."""
    if backend == "redis" and shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is missing in CI: .ci/run should have installed it")
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    argv = ["uv", "run", *(WITH_REDIS if backend == "redis" else ()), "python", "-m"]
    argv += ["tools.faults", "--backend", backend, "--runs", "1"]
    for fault in faults:
        argv += ["--only", fault]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEMO_", "REDIS_URL"))}
    env["DEMO_LOG_DIR"] = str(tmp_path / "logs")
    if env.get("VIRTUAL_ENV") != str(ROOT / ".venv"):
        env.pop("VIRTUAL_ENV", None)
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("fault "))
    columns = header[len("fault") :].split()
    rows = {}
    for fault in faults:
        (row,) = [line for line in lines if line.startswith(f"{fault}  ")]
        rows[fault] = dict(zip(columns, map(int, row[len(fault) :].split()), strict=True))
    return rows


@pytest.mark.e2e  # the harness as docs/faults.md runs it: uv run, in the project's environment
@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_the_fault_harness_applies_each_invocations_call_once_on_each_backend(
    backend: str, tmp_path: Path
) -> None:
    """`python -m tools.faults`, as docs/faults.md runs it, one run of each fault that used to
    apply a call twice: with the claim, on SQLite and on Redis (a private redis-server), each
    op is applied exactly once (no double, no unapplied, none failed or lost), and the cut
    call is replayed or fenced. Checked by mutation: with the key dropped from tasks.py's
    `_hit`, the rows read double 1, replayed 0, on SQLite and on Redis, and this test failed."""
    for fault, figures in harness(backend, HARNESS_FAULTS, tmp_path).items():
        # The cut call was applied and its repeat replayed, or, still in flight when the
        # recovered claim's call came (a loaded machine), fenced and the repeat applied.
        cut = figures.pop("replayed") + figures.pop("fenced")
        assert cut >= 1, (fault, figures)
        assert figures == {
            "collisions": 0,
            "double": 0,
            "409": 0,
            "failed": 0,
            "unapplied": 0,
            "lost": 0,
            "failed-applied": 0,
            "alive-after": 2,
            "gone": 0,
        }, (fault, figures)


STORE_FAULTS = ("a call served past its timeout", "Redis paused 5 s")
STORE_FAULTS += ("Redis restarted (no persistence)",)


@pytest.mark.e2e
def test_the_fault_harness_counts_what_a_redis_pause_or_restart_cost(tmp_path: Path) -> None:
    """One run of the Redis pause and restart rows, and of the timed-out call, on the real
    provider. The timed-out call failed but was fenced, not applied: it is no FAILED-but-applied
    (checked by mutation: with `i in keys` dropped from the count, the row read 1 and this
    failed). Redis restarted without its data: its 80 invocations are gone, not lost, and
    none is counted FAILED (checked: with KeyError read as a pending status, lost read 80).
    Neither breaks a guarantee: no collision, no double; a pause loses nothing, reports no
    applied call FAILED, and both workers ride it and the restart out (checked by mutation:
    with keyclaim's runner re-raising every store error, as pynenc's loop does, the restart
    row's alive-after read 0 and this failed)."""
    rows = harness("redis", STORE_FAULTS, tmp_path)
    timed_out, pause, restart = (rows[fault] for fault in STORE_FAULTS)
    assert (timed_out["failed"], timed_out["fenced"], timed_out["failed-applied"]) == (1, 1, 0)
    assert timed_out["alive-after"] == 2, timed_out
    assert pause["collisions"] == pause["double"] == pause["gone"] == 0, pause
    assert (pause["failed-applied"], pause["lost"], pause["alive-after"]) == (0, 0, 2), pause
    assert (restart["gone"], restart["lost"], restart["failed"]) == (80, 0, 0), restart
    assert restart["collisions"] == restart["double"] == 0, restart
    assert restart["alive-after"] == 2, restart
