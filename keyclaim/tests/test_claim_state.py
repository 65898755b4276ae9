"""What the claim keeps on SQLite: no call's records once final, no idle key's but a floor.

Nothing of a stopped worker either, after the window; a key too long is refused before any
write.

The calls are claimed and ended in-process, by pynenc's own claiming loop (test_sqlite_claim's
claimers); the Redis twins run in redis_state.py (test_redis_claim.py).
"""

import json
import socket
import sqlite3
import subprocess
import time
from contextlib import closing
from types import SimpleNamespace

import pytest
from claimkit import Claim, unique
from pynenc.invocation.status import InvocationStatus as S
from test_sqlite_claim import claimer, take

from keyclaim import Refused, sqlite_tables
from keyclaim.fleet import FleetStore
from keyclaim.sqlite_claim import AtomicClaimSQLiteOrchestrator as Claimer

CLAIM_TABLES = ("key_slots", "key_lines", "key_dues", "key_admitted", "claimed", "fence_counters")


def rows(claim: Claim, *tables: str) -> dict[str, int]:
    """Rows per table of the app's database: these of the claim's, or every non-empty one."""
    with closing(sqlite3.connect(claim.db)) as conn:
        names = [n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        prefix = claim.app.orchestrator.tables.table_prefix
        wanted = [f"{prefix}_{t}" for t in tables] if tables else names
        found = {n: conn.execute(f"SELECT COUNT(*) FROM {n}").fetchone()[0] for n in wanted}
    return {n.removeprefix(f"{prefix}_"): c for n, c in found.items() if c or tables}


def run_to(orchestrator: Claimer, ctx: object, status: S) -> object:
    """Claim the next call, run it, and end it with this status."""
    (invocation,) = take(orchestrator, ctx)
    orchestrator.set_invocation_status(invocation.invocation_id, S.RUNNING, ctx)
    orchestrator.set_invocation_status(invocation.invocation_id, status, ctx)
    return invocation


def floor(claim: Claim) -> dict[str, int]:
    with closing(sqlite3.connect(claim.db)) as conn:
        table = claim.app.orchestrator.fence_counters
        return dict(conn.execute(f"SELECT fence_key, token FROM {table}").fetchall())


def test_a_final_calls_claim_records_go_in_the_step_that_ends_it(claim: Claim) -> None:
    """Three calls of one key (two wait in its line, each handed the key in turn) and two of a
    key of two slots, ended SUCCESS or FAILED: no claimed row, slot, line or due time is left,
    and of the token counters only the floor. A late outcome of a final call (its attempt still
    carries its token, which the store no longer has) is not stored. Checked by mutation: with
    `_release` leaving the `_claimed` row, 5 rows were left and this test failed."""
    one, two = unique(), unique()
    calls = [claim.tasks.call_keyed(one, f"op{n}") for n in range(3)]
    calls += [claim.tasks.call_two(two, f"op{n}") for n in range(2)]
    orchestrator, ctx = claimer(claim.app, Claimer)
    ended = [run_to(orchestrator, ctx, s) for s in (S.SUCCESS, S.FAILED, S.SUCCESS, S.SUCCESS)]
    ended.append(run_to(orchestrator, ctx, S.FAILED))
    assert {i.invocation_id for i in ended} == {c.invocation_id for c in calls}
    assert rows(claim, *CLAIM_TABLES) == dict.fromkeys(CLAIM_TABLES, 0) | {"fence_counters": 1}
    assert list(floor(claim)) == [""]
    late = ended[0]
    assert orchestrator.fence_token(late.invocation_id) is None and late.fence_token
    orchestrator.set_invocation_result(late, "late", ctx)
    assert claim.status(late.invocation_id) == S.SUCCESS
    with pytest.raises(KeyError):  # no result stored
        claim.app.state_backend.get_result(late.invocation_id)


def test_an_idle_key_keeps_only_the_floor_and_its_next_token_is_still_larger(
    claim: Claim, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key claimed, ended, idle: its counter is folded into the floor. Then the claiming
    process's wall clock goes back an hour: the key's next first token is still above every
    earlier one. Checked by mutation: with an idle slot's first token from the clock alone
    (`_issue_token` without the floor), the second token was an hour's worth of microseconds
    smaller and this test failed."""
    acct = unique()
    orchestrator, ctx = claimer(claim.app, Claimer)
    tokens = []
    back = SimpleNamespace(time=lambda: time.time() - 3600)
    for n in range(2):
        claim.tasks.call_keyed(acct, f"op{n}")
        tokens.append(run_to(orchestrator, ctx, S.SUCCESS).fence_token)
        assert floor(claim) == {"": tokens[-1]}  # the key itself keeps nothing
        monkeypatch.setattr(sqlite_tables, "time", back)
    assert tokens[1] > tokens[0]


def test_a_key_too_long_writes_nothing_and_a_refused_short_one_leaves_nothing(
    claim: Claim,
) -> None:
    """A 2 KiB account id is refused in one line as it registers, and not a row of the
    database changes; an id the task fails at run time ends FAILED, and the claim keeps
    nothing of it but the floor. Checked by mutation: without the length checks, the call was
    registered; with the check in `register_new_invocations` alone (not in `route_call`),
    pynenc's invocation row and its value stored aside were written: this test failed."""
    orchestrator, ctx = claimer(claim.app, Claimer)
    before = rows(claim)
    with pytest.raises(Refused) as refused:
        claim.tasks.call_keyed("x" * 2048, "op")
    assert "\n" not in str(refused.value) and "2048 bytes" in str(refused.value)
    assert rows(claim) == before
    bad = claim.tasks.call_keyed("not an account!", "op")
    (taken,) = take(orchestrator, ctx)
    orchestrator.set_invocation_status(bad.invocation_id, S.RUNNING, ctx)
    orchestrator.set_invocation_exception(taken, ValueError("no such account"), ctx)
    assert claim.status(bad.invocation_id) == S.FAILED
    assert rows(claim, *CLAIM_TABLES) == dict.fromkeys(CLAIM_TABLES, 0) | {"fence_counters": 1}


def test_a_stopped_workers_records_and_a_spent_rate_window_go_with_the_sweep(claim: Claim) -> None:
    """A runner silent for twice the dead-after window (its beat aged), a fleet record of a
    process gone, and a rate window's admission older than every declared window: the next
    sweep forgets all three, and keeps the sweeper's own beat. Checked by mutation: with the
    sweep's two prunes left out of `recover_silent_runners`, all three stayed and this test
    failed."""
    orchestrator, ctx = claimer(claim.app, Claimer)
    gone, gone_ctx = claimer(claim.app, Claimer)
    claim.tasks.call_rated(unique(), "op")
    run_to(orchestrator, ctx, S.SUCCESS)
    dead = subprocess.Popen(["true"])
    dead.wait()
    record = {"settings": {}, "pid": dead.pid, "host": socket.gethostname()}
    FleetStore(claim.app).write(gone_ctx.runner_id, json.dumps(record))
    with closing(sqlite3.connect(claim.db)) as conn, conn:
        conn.execute(f"UPDATE {gone.admitted} SET at = at - 3600")
        conn.execute(
            f"UPDATE {gone.beats} SET at = at - 3600 WHERE runner_id = ?", (gone_ctx.runner_id,)
        )
    assert rows(claim, "claim_beats", "key_admitted", "claim_fleet") == {
        "claim_beats": 2,
        "key_admitted": 1,
        "claim_fleet": 1,
    }
    sweeper, sweeper_ctx = claimer(claim.app, Claimer)
    sweeper.recover_silent_runners(sweeper_ctx)
    assert rows(claim, "claim_beats", "key_admitted", "claim_fleet") == {
        "claim_beats": 2,
        "key_admitted": 0,
        "claim_fleet": 0,
    }
    assert sweeper.silent_runners({ctx.runner_id, sweeper_ctx.runner_id}, 60.0) == set()


def test_the_floor_keeps_the_highest_token_whichever_key_ends_last(
    claim: Claim, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two keys running at once end in the order opposite to their claims (the later, higher
    token folded first), then the wall clock goes back an hour: the key that ended first gets
    a next token above its last. Checked by mutation: with the fold writing the last folded
    token (`SET token = excluded.token`, no MAX), the floor fell to the older key's token, the
    second key's next token was below its first, and this test failed."""
    early, late = unique(), unique()
    orchestrator, ctx = claimer(claim.app, Claimer)
    running = []
    for acct in (early, late):
        claim.tasks.call_keyed(acct, "op0")
        (taken,) = take(orchestrator, ctx)
        orchestrator.set_invocation_status(taken.invocation_id, S.RUNNING, ctx)
        running.append(taken)
    first, second = running
    assert second.fence_token > first.fence_token
    for ending in (second, first):
        orchestrator.set_invocation_status(ending.invocation_id, S.SUCCESS, ctx)
    assert floor(claim) == {"": second.fence_token}
    monkeypatch.setattr(sqlite_tables, "time", SimpleNamespace(time=lambda: time.time() - 3600))
    claim.tasks.call_keyed(late, "op1")
    assert run_to(orchestrator, ctx, S.SUCCESS).fence_token > second.fence_token


def test_an_unstored_call_recovered_between_the_check_and_the_kill_does_not_end_the_loop(
    claim: Claim,
) -> None:
    """A call whose outcome the store never took is RUNNING here as the loop looks
    (`_reroute_unstored`), and recovered by another runner (this one silent through the
    outage) before its KILLED is written: the loop goes on, the call is left as the recovery
    left it, queued once. Seen in `tools.faults --backend redis --only 'Redis paused 60 s'`: a
    worker exited on InvocationStatusTransitionError(rerouted -> killed). Checked by mutation:
    without the transition errors suppressed in `_reroute_unstored`, it raised and this test
    failed."""
    orchestrator, ctx = claimer(claim.app, Claimer)
    other, other_ctx = claimer(claim.app, Claimer)
    claim.tasks.call_keyed(unique(), "op")
    (taken,) = take(orchestrator, ctx)
    call = taken.invocation_id
    orchestrator.set_invocation_status(call, S.RUNNING, ctx)
    orchestrator._unfinished(call, Exception("store unreachable"))
    with closing(sqlite3.connect(claim.db)) as conn, conn:
        conn.execute(
            f"UPDATE {other.beats} SET at = at - 3600 WHERE runner_id = ?", (ctx.runner_id,)
        )
    read = orchestrator._record_of

    def read_then_recovered(invocation_id: str) -> object:
        record = read(invocation_id)  # RUNNING here: then the other runner recovers it
        assert other.recover_in_store(invocation_id, other_ctx.runner_id, 60.0, 60.0)
        return record

    orchestrator._record_of = read_then_recovered  # type: ignore[method-assign]
    orchestrator._reroute_unstored(ctx)
    assert orchestrator._unstored == set()
    assert claim.status(call) == S.REROUTED
    with closing(sqlite3.connect(claim.db)) as conn:
        queue = claim.app.broker.tables.QUEUE
        assert conn.execute(
            f"SELECT COUNT(*) FROM {queue} WHERE invocation_id = ?", (call,)
        ).fetchone() == (1,)
