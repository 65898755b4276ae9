"""pynenc's records of finished invocations, purged once they are older than the retention
(keyclaim.history), on SQLite and Redis; a holder and a parked call are left alone."""

import json
import subprocess
from pathlib import Path
from typing import Any

import purge_run
import pytest
from claimkit import HERE, Claim, new_claim
from provider import Judge
from pynenc.invocation.status import InvocationStatus as S
from pynenc.runner.runner_context import RunnerContext
from test_redis_claim import with_redis_plugin

from keyclaim import history


def check(found: dict[str, Any]) -> None:
    before, after = found["before"], found["after"]
    holder, taken, holder_status = found["holder"]
    parked, parked_status, parked_history = found["parked"]
    # Each finished call had its orchestrator row, args, history, result...; none is left.
    assert all(before[i] >= 5 for i in found["done"]), before
    assert found["left"] == []
    # The holder (RUNNING) and the call parked behind it keep every record.
    assert (taken, holder_status) == (holder, S.RUNNING.value)
    assert (parked_status, after[holder], after[parked]) == (
        S.REGISTERED.value,
        before[holder],
        before[parked],
    )
    assert parked_history >= 1


def test_on_sqlite_finished_calls_leave_no_record_and_a_holder_and_its_line_stay(
    tmp_path: Path, provider: Judge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mutations checked: with the state backend's tables left out of SQLITE_ROWS, the done
    calls kept their history and results (after > 0); with the final-status filter dropped
    from the purge's queries, the RUNNING holder was purged (after[holder] == 0)."""
    monkeypatch.setenv("PYNENC__AUTO_FINAL_INVOCATION_PURGE_HOURS", purge_run.RETAIN_HOURS)
    claim: Claim = new_claim(tmp_path, provider)
    check(purge_run.run(claim.app, claim.tasks))


def test_a_long_retention_purges_nothing(claim: Claim) -> None:
    """pynenc's default, 24 hours: a call that just finished stays. Mutation checked: with the
    retention ignored (before = time.time()), the batch took it."""
    ctx = RunnerContext(runner_cls="ThreadRunner")
    invocation = claim.tasks.call_unsafe("acct-now", "op")
    for taken in claim.app.orchestrator.get_invocations_to_run(1, ctx):
        taken.run(ctx)
    assert claim.final(invocation.invocation_id) == [S.SUCCESS]
    assert history.purge_batch(claim.app) == 0
    assert len(purge_run.records(claim.app, invocation.invocation_id)) >= 5


@pytest.mark.slow
@pytest.mark.e2e
def test_on_redis_finished_calls_leave_no_record_and_a_holder_and_its_line_stay(
    redis_url: str,
) -> None:
    """The same on Redis, every key and member naming the invocation counted. Mutations
    checked: with the state backend's keys left out of `own` (history, result, invocation),
    after > 0; with the claim's holder check removed and the holder FAILED... see below."""
    result = subprocess.run(
        [*with_redis_plugin(), "purge_run.py", redis_url],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    check(json.loads(result.stdout.strip().splitlines()[-1]))
