"""What production brings to the claim, with real workers, the real provider and faketime.

Any account id, a skewed clock, a lost store, a fenced call, a mixed fleet.
"""

import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from pynenc.conf.config_task import ConcurrencyControlType as Mode
from pynenc.invocation.status import InvocationStatus as S
from pynenc.runner.runner_context import RunnerContext

import api_server
import tasks
from demo import heartbeats, ownership
from demo.processes import Child, free_port, start_child, stop_children, wait_until
from demo.provider import Provider
from demo.stack import ROOT
from helpers import WAIT, account, unique, wait_final
from keyclaim.keys import line_key
from keyclaim.sqlite_claim import AtomicClaimSQLiteOrchestrator
from stand_in import fences, rules
from stand_in.client import CallTransport, path_part
from stand_in.held import app as provider_app  # api_server's, with /pause and /resume

SHORT = {"DEMO_ATOMIC_CLAIM": "1", "DEMO_DEAD_AFTER": "3", "DEMO_CALL_TIMEOUT": "2"}
# The skew (40 s) is past this window: read on a worker's own clock, a live holder looks dead.
SKEW_WINDOWS = {"DEMO_ATOMIC_CLAIM": "1", "DEMO_DEAD_AFTER": "30", "DEMO_CALL_TIMEOUT": "2"}


def claimed(orchestrator: AtomicClaimSQLiteOrchestrator, ctx: RunnerContext) -> list[str]:
    return [inv.invocation_id for inv in orchestrator.get_invocations_to_run(2, ctx)]


# An account id, as the provider sees it.


@pytest.mark.parametrize(
    "bad", ["acme/op2?", "acme/op3#", "acme?x=1", "", "a b", ".", "..", 42, None]
)
def test_an_id_the_provider_cannot_take_is_refused_in_one_line(bad: object) -> None:
    with pytest.raises(ValueError) as refused:
        path_part(bad)
    assert "\n" not in str(refused.value) and "the provider takes" in str(refused.value)


def test_an_id_the_provider_takes_goes_into_the_path_as_it_is() -> None:
    assert path_part("acme-2.eu:x_y") == "acme-2.eu:x_y"


def test_values_that_are_one_account_to_the_provider_are_one_key(claim_app: Provider) -> None:
    """42 and "42" are one account in a URL: the claim serialises them as one key. Checked by
    mutation: with the key's identity taken from pynenc's serialized arguments (json.dumps of
    them, as before), both invocations were claimed at once and this test fails."""
    name = str(abs(hash(unique())) % 10**9)
    as_text, as_number = tasks.call_keyed(name, "op1"), tasks.call_keyed(int(name), "op2")
    orchestrator = AtomicClaimSQLiteOrchestrator(tasks.app)
    ctx = RunnerContext(runner_cls="ThreadRunner")
    orchestrator.register_runner_heartbeats([ctx.runner_id])
    assert claimed(orchestrator, ctx) == [as_text.invocation_id]  # the other waits in its line
    orchestrator.set_invocation_status(as_text.invocation_id, S.RUNNING, ctx)
    orchestrator.set_invocation_status(as_text.invocation_id, S.SUCCESS, ctx)
    assert claimed(orchestrator, ctx) == [as_number.invocation_id]


def test_two_tasks_keyed_on_one_account_wait_in_one_line(claim_app: Provider) -> None:
    """call_keyed, refresh_once and call_keyed_drop are three tasks, but acme is one account to
    the provider: pynenc scopes KEYS per task, and with a line per task they ran at once and
    fenced each other (two FAILED, with no fault at all). Checked by mutation: with the task in
    the line's key, the refresh was claimed beside the holder and this test fails."""
    acct = unique()
    holder = tasks.call_keyed(acct, "op1")
    orchestrator = AtomicClaimSQLiteOrchestrator(tasks.app)
    ctx = RunnerContext(runner_cls="ThreadRunner")
    orchestrator.register_runner_heartbeats([ctx.runner_id])
    assert claimed(orchestrator, ctx) == [holder.invocation_id]
    refresh, dropped = tasks.refresh_once(acct), tasks.call_keyed_drop(acct, "op2")
    assert claimed(orchestrator, ctx) == []  # the refresh waits in acme's line; the drop drops
    assert tasks.app.orchestrator.get_invocation_status(dropped.invocation_id) is (
        S.CONCURRENCY_CONTROLLED_FINAL
    )
    orchestrator.set_invocation_status(holder.invocation_id, S.RUNNING, ctx)
    orchestrator.set_invocation_status(holder.invocation_id, S.SUCCESS, ctx)
    assert claimed(orchestrator, ctx) == [refresh.invocation_id]


@pytest.mark.parametrize(
    ("mode", "key", "shared"),
    [
        (Mode.KEYS, {"account_id": '"acme"'}, True),
        (Mode.TASK, {}, False),
        (Mode.ARGUMENTS, {"account_id": '"acme"', "op": '"x"'}, False),
    ],
)
def test_only_keys_lines_are_shared_across_tasks(mode: Mode, key: dict, shared: bool) -> None:
    """Under KEYS a line is the account's, whichever task; under TASK and ARGUMENTS it stays
    the task's, as pynenc scopes them. Checked by mutation: with every line the key's alone,
    pynenc's two TASK-mode recovery tasks shared the line "{}" and one dropped the other."""

    def invocation(task_key: str) -> Any:
        conf = SimpleNamespace(running_concurrency=mode)
        return SimpleNamespace(
            task=SimpleNamespace(conf=conf, task_id=SimpleNamespace(key=task_key))
        )

    one, other = (line_key(invocation(t), key) for t in ("tasks.a", "tasks.b"))
    assert (one == other) is shared


def test_a_call_for_an_id_with_a_slash_fails_and_never_reaches_the_provider(
    provider: Provider, start_worker: Callable[..., Child]
) -> None:
    """A real worker with the claim: `acme/op2?` was put into the path unencoded, reached the
    provider as account `acme`, and overlapped acme's own calls (3 collisions in 4, all
    SUCCESS). Now the task refuses it before calling. Checked by mutation: with the id put into
    the path as it is, the provider saw a call for the account and this test fails."""
    start_worker(SHORT)
    acct = unique()
    bad = [tasks.call_keyed(f"{acct}/op2?", "x"), tasks.call_keyed(f"{acct}/op3#", "y")]
    assert wait_final(*(b.invocation_id for b in bad)) == [S.FAILED, S.FAILED]
    assert provider.report()["calls"] == 0, provider.report()


# A fenced call, and tokens across a lost store.


def test_a_fenced_call_fails_instead_of_succeeding(
    provider: Provider, start_worker: Callable[..., Child]
) -> None:
    """After a lost store, tokens began again at 1; the provider fenced every call and pynenc
    marked each SUCCESS with the result "fenced": 3 of 3 silently not applied. Here the
    provider's fence is ahead of the claim's token: the call must fail. Checked by mutation:
    without the task's raise on "fenced", the invocation ended SUCCESS and this test fails."""
    start_worker(SHORT)
    acct = unique()
    with httpx.Client(base_url=provider.base_url) as client:  # a newer claim, elsewhere
        client.post(
            f"/call/{acct}/elsewhere", params={"hold": 0, "token": 2**53}
        ).raise_for_status()
    provider_before = account(provider, acct)["fenced"]
    fenced = tasks.call_keyed(acct, "late")
    assert wait_final(fenced.invocation_id) == [S.FAILED]
    assert account(provider, acct)["fenced"] == provider_before + 1


def test_a_keys_first_token_is_newer_than_any_a_lost_store_issued(claim_app: Provider) -> None:
    """A store that lost its data (a Redis restarted without persistence, a new database) must
    not start the tokens again at 1: the provider would fence every call. Checked by mutation:
    with a key's first token 1, the token after the loss is smaller and this test fails."""
    acct = unique()
    orchestrator = AtomicClaimSQLiteOrchestrator(tasks.app)
    ctx = RunnerContext(runner_cls="ThreadRunner")
    orchestrator.register_runner_heartbeats([ctx.runner_id])
    first = tasks.call_keyed(acct, "op1")
    assert claimed(orchestrator, ctx) == [first.invocation_id]
    before = orchestrator.fence_token(first.invocation_id)
    orchestrator.set_invocation_status(first.invocation_id, S.RUNNING, ctx)
    orchestrator.set_invocation_status(first.invocation_id, S.SUCCESS, ctx)
    with closing(sqlite3.connect(orchestrator.sqlite_db_path)) as conn, conn:
        conn.execute(f"DELETE FROM {orchestrator.fence_counters}")  # the store's data, gone
    second = tasks.call_keyed(acct, "op2")
    assert claimed(orchestrator, ctx) == [second.invocation_id]
    after = orchestrator.fence_token(second.invocation_id)
    assert before is not None and after is not None and after > before
    assert after <= rules.MAX_TOKEN  # the provider takes it


def restarted(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a restart leaves the provider: no state, and no fence until its first request."""
    monkeypatch.setattr(api_server, "state", rules.Books())
    monkeypatch.setattr(fences, "newest", {})
    monkeypatch.setattr(fences, "file", None)


def test_the_providers_fence_outlives_its_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a restart the provider knew no token and applied token 3 after token 7. Checked by
    mutation: with the fences not restored at the first request, the late call is applied."""
    monkeypatch.setenv("DEMO_LOG_DIR", str(tmp_path))
    monkeypatch.setattr(ownership, "owner", None)
    restarted(monkeypatch)
    with TestClient(api_server.app) as c:
        c.post("/reset", params={"label": "fence", "hold": 0}).raise_for_status()
        assert c.post("/call/acme/one", params={"token": 7}).json() == {"outcome": "ok"}
        restarted(monkeypatch)
        assert c.post("/call/acme/two", params={"token": 3}).json() == {"outcome": "fenced"}
        c.post("/reset", params={"label": "next scenario", "hold": 0}).raise_for_status()
        restarted(monkeypatch)
        assert c.post("/call/acme/three", params={"token": 3}).json() == {"outcome": "ok"}
    assert [p.name for p in tmp_path.iterdir()] == ["fences-80.jsonl"]  # TestClient's port


def test_a_new_token_appends_one_line_and_a_cut_line_is_dropped_at_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fences were rewritten whole, every account's, on each new token: O(accounts) a call,
    45% of the provider's time at 500 accounts. Now one line is appended; a line a crash cut
    short is dropped at the restart, and a token kept after it is not lost with it. Checked by
    mutation: admit() rewriting the file whole fails the appended-line check; restore() without
    writing the file back whole loses a8's token 12 (appended onto the cut line)."""
    monkeypatch.setenv("DEMO_LOG_DIR", str(tmp_path))
    restarted(monkeypatch)
    asyncio.run(fences.restore(SimpleNamespace(scope={"server": ("", 1)})))  # type: ignore[arg-type]
    file = tmp_path / "fences-1.jsonl"
    for n in range(500):
        assert fences.admit(f"a{n}", 0, 10)
    before = file.read_bytes()
    assert fences.admit("a7", 0, 11) and fences.admit("a7", 0, 11)  # the same token: no line
    assert not fences.admit("a7", 0, 10)
    assert file.read_bytes() == before + b'["a7", 0, 11]\n'
    with file.open("a") as out:
        out.write('["a8", 0, 1')  # a crash mid-line
    for token in (None, 12):
        restarted(monkeypatch)
        asyncio.run(fences.restore(SimpleNamespace(scope={"server": ("", 1)})))  # type: ignore[arg-type]
        assert len(fences.newest) == 500 and fences.newest["a7", 0] == 11
        assert fences.newest["a8", 0] == (token or 10)
        assert fences.admit("a8", 0, 12)


def test_a_token_past_53_bits_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A 4,300-digit token was taken, and fenced every later call for its account."""
    monkeypatch.setenv("DEMO_LOG_DIR", str(tmp_path))
    monkeypatch.setattr(ownership, "owner", None)
    restarted(monkeypatch)
    with TestClient(api_server.app) as c:
        c.post("/reset", params={"label": "bound", "hold": 0}).raise_for_status()
        r = c.post("/call/acme/one", params={"token": "9" * 4300})
        assert r.status_code == 422, r.text
        assert c.post("/call/acme/two", params={"token": 2**53}).status_code == 200
        assert c.post("/call/acme/three", params={"token": 2**53 + 1}).status_code == 422


# A skewed clock.


def skew_check(env: dict[str, str], redis: bool) -> dict[str, str]:
    argv = [sys.executable, "tests/skew_check.py"]
    if redis:
        argv = ["uv", "run", "--isolated", "--group", "redis", "python", "tests/skew_check.py"]
    env = {
        **os.environ,
        **SKEW_WINDOWS,
        "DEMO_LOG_LEVEL": "warning",
        "PYTHONPATH": str(ROOT),
        **env,
    }
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def needs_faketime() -> None:
    if shutil.which("faketime") is None:
        if os.environ.get("CI"):
            pytest.fail("faketime is missing in CI: .ci/run should have installed it")
        pytest.skip("faketime is not installed (apt-get install -y faketime)")


@pytest.mark.slow
def test_a_skewed_clock_takes_no_live_holder_for_dead_on_sqlite(tmp_path: Path) -> None:
    """A sweep by a worker 40 s ahead, and a holder whose worker is 40 s behind, under faketime:
    each read its own wall clock, and took a live holder for dead (8 to 18 calls in 100
    applied twice). Checked by mutation: with host_clock() returning time.time(), the holder
    was recovered and this test fails; the control (a window later) is recovered either way.
    A holder whose beats the store lost is not dead at once, only a window after the sweep
    gave it a first beat (checked: with a missing beat read as silence and no first beat, it
    was recovered at once; with no first beat alone, it was never recovered)."""
    needs_faketime()
    found = skew_check({"DEMO_DB": str(tmp_path / "skew.db")}, redis=False)
    assert found == {
        "ahead": "running",
        "behind": "running",
        "unbeaten": "running",
        "unbeaten, a window later": "rerouted",
    }


@pytest.mark.slow
@pytest.mark.e2e
def test_a_skewed_clock_takes_no_live_holder_for_dead_on_redis(redis_url: str) -> None:
    """The same on Redis, whose clock is its TIME; FLUSHALL loses every beat at once. Checked by
    mutation: with Redis TIME replaced by the worker's time.time(), the holder was recovered
    and this test fails; so it did with a missing beat read as silence, or with no first beat."""
    needs_faketime()
    found = skew_check({"DEMO_BACKEND": "redis", "REDIS_URL": redis_url}, redis=True)
    assert found == {
        "ahead": "running",
        "behind": "running",
        "unbeaten": "running",
        "unbeaten, a window later": "rerouted",
    }


# A mixed fleet.


def worker_argv() -> list[str]:
    return [sys.executable, "-m", "pynenc", "--app", "tasks.app", "runner", "start"]


def started_worker(db: str, folder: Path, name: str, env: dict[str, str]) -> Child:
    """A worker on db, started (the test waits for what it needs of it)."""
    full = {**os.environ, "DEMO_DB": db, "DEMO_LOG_LEVEL": "warning", **env}
    return start_child(name, worker_argv(), folder / f"{name}.log", full, ROOT)


def all_at_once(*runs: tuple[list[str], dict[str, str]]) -> list[tuple[int, str, str]]:
    """Each (argv, env) run from the project's folder, side by side: (exit code, out, err)."""
    started = [
        subprocess.Popen(
            a, cwd=ROOT, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for a, e in runs
    ]
    try:
        finished = [p.communicate(timeout=60) for p in started]
    finally:
        for p in started:
            if p.poll() is None:
                p.kill()
                p.wait(WAIT)
    return [(p.returncode, out, err) for p, (out, err) in zip(started, finished, strict=True)]


def fleet_size(db: str) -> int:
    with closing(sqlite3.connect(db)) as conn:
        tables = [
            t for (t,) in conn.execute("SELECT name FROM sqlite_master") if t.endswith("fleet")
        ]
        return sum(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables)


@pytest.mark.slow
@pytest.mark.e2e
def test_a_mixed_fleet_is_refused_in_one_line_naming_both(
    tmp_path: Path, live_api: Provider
) -> None:
    """One worker with the claim and one without on one database gave 2 collisions and 41
    calls without a token; other windows beside the claim's, 16 calls applied twice. Each is
    now refused, the worker and enqueue.py alike. Checked by mutation: with join_fleet and
    fleet_problem returning None, the second worker started and this test fails."""
    db = str(tmp_path / "fleet.db")
    first = started_worker(db, tmp_path, "claim", SHORT)
    try:
        wait_until(lambda: os.path.exists(db) and fleet_size(db) == 1, WAIT, "its record")
        cases = {
            "the claim off": {"DEMO_ATOMIC_CLAIM": "0"},
            "other windows": {**SHORT, "DEMO_DEAD_AFTER": "15", "DEMO_CALL_TIMEOUT": "10"},
        }
        port = live_api.base_url.rsplit(":", 1)[1]
        enqueue = [
            sys.executable,
            "enqueue.py",
            "keyed",
            "--port",
            port,
            "--no-chart",
            "--no-links",
        ]
        base = {**os.environ, "DEMO_DB": db, "DEMO_LOG_LEVEL": "warning"}
        *workers, (enqueued, e_out, e_err) = all_at_once(
            *((worker_argv(), {**base, **env}) for env in cases.values()),
            (enqueue, {**base, "DEMO_ATOMIC_CLAIM": "0"}),
        )
        for case, (code, out, err) in zip(cases, workers, strict=True):
            assert code == 2, f"{case}: {out}{err}"
            (line,) = err.strip().splitlines()
            assert line.startswith("tasks.py: this process runs with atomic claim "), line
            assert f"pid {first.proc.pid}" in line and "dead after 3s" in line, line
        assert enqueued == 2, e_out + e_err
        assert "atomic claim off" in e_err and "atomic claim on" in e_err
        same = started_worker(db, tmp_path, "same", SHORT)  # the same settings: it joins
        try:
            wait_until(lambda: fleet_size(db) == 2, WAIT, "the second record")
            wait_until(lambda: len(heartbeats.in_sqlite(db)) == 2, WAIT, "both workers' beats")
        finally:
            stop_children([same])
    finally:
        stop_children([first])
    assert fleet_size(db) == 0  # a worker that stops leaves the fleet


# A provider down for a moment.


def test_a_refused_connection_is_tried_again_until_the_provider_is_back() -> None:
    """A provider down for about 3 s failed 115 of 200 invocations. A refused connection
    reached nothing, so the task's client tries it again (4 times over about 3.5 s): here the
    provider comes up a moment after the first try was refused. Checked by mutation: without
    the transport's retries, the call raised ConnectError and this test fails."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(provider_app, host="127.0.0.1", port=port))
    thread = threading.Thread(target=server.run, daemon=True)
    later = threading.Timer(0.3, thread.start)  # the outage: the first try finds nobody
    later.start()
    try:
        r = tasks.provider.get(f"http://127.0.0.1:{port}/health")
        assert r.status_code == 200, r.text
    finally:
        later.cancel()
        server.should_exit = True
        if thread.is_alive():
            thread.join(WAIT)


# A 409 for the call's own Idempotency-Key.


def test_a_409_for_the_calls_own_key_is_sent_again_until_it_is_answered_from_the_store() -> None:
    """The same invocation's call arrives while its first run's call is still served (stock
    pynenc requeues a deploy's call before its thread ends): the provider answers 409, and
    nothing was applied. The task's client sends it again until the first call has ended, and
    gets back what that call did, replayed: one call applied, the answer a success. With less
    patience than the first call lasts, the 409 is what comes back, and the task fails on it.
    Checked by mutation: with CallTransport returning the first 409, the second call came back
    409 at once and this test failed."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(provider_app, host="127.0.0.1", port=port))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=WAIT) as control:
            wait_until(lambda: server.started, WAIT, "the provider to start")
            control.post("/reset", params={"label": "409", "hold": 0}).raise_for_status()
            acct, key = unique(), {"Idempotency-Key": f"inv-{unique()}"}

            def report() -> dict:
                return control.get("/report").json()

            control.post("/pause", params={"account_id": acct}).raise_for_status()
            answers: dict[str, httpx.Response] = {}

            def send(name: str, client: httpx.Client) -> None:
                answers[name] = client.post(f"{base}/call/{acct}/charge", headers=key)

            first = threading.Thread(target=send, args=("first", tasks.provider))
            first.start()
            wait_until(lambda: report()["in_flight"] == 1, WAIT, "the first call in flight")
            impatient = httpx.Client(transport=CallTransport(patience=0.0), timeout=WAIT)
            with impatient:
                send("impatient", impatient)
            again = threading.Thread(target=send, args=("again", tasks.provider))
            again.start()
            wait_until(lambda: report()["conflicts"] >= 3, WAIT, "the call sent again on 409")
            control.post("/resume").raise_for_status()
            for sender in (first, again):
                sender.join(WAIT)
            final = report()
    finally:
        server.should_exit = True
        thread.join(WAIT)
    assert answers["impatient"].status_code == 409, answers["impatient"].text
    assert answers["first"].json() == answers["again"].json() == {"outcome": "ok"}
    assert (final["replayed"], final["fenced"], final["collisions"]) == (1, 0, 0)
    # Applied once: every call but the 409s and the replay.
    assert final["calls"] - final["conflicts"] - final["replayed"] == 1, final
