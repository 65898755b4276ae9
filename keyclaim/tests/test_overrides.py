"""A limit per key from a rule, and an operator's override, on SQLite and on Redis.

tiers.py's checks, each counted step by step in-process: here on the test's own SQLite file,
and on a private Redis through tiers.py run as a script (test_redis_claim.py's redis_script).
"""

import os
import subprocess
import sys
from collections.abc import Callable

import pytest
import tiers
from claimkit import HERE, Claim
from test_redis_claim import redis_script
from test_sqlite_claim import claimer

from keyclaim import overrides, top
from keyclaim.sqlite_claim import AtomicClaimSQLiteOrchestrator as Claimer

EXPECTED = {
    "rule_per_tier": {"started": 4, "waiting": 4},
    "raise_starts_waiting_calls": {"first": 1, "started": 2, "then": 2, "waiting": 1},
    "lower_admits_nothing_until_below": {
        "after": [0, 0, 1, 1, 1, 0],
        "statuses": ["success"] * 5,
        "waiting": 0,
    },
    "clear_restores_the_tasks_own": {"started": 1, "waiting": 2, "kept": {}},
    "two_workers_never_exceed": {"worst": -1, "starts": 16, "statuses": ["success"]},
}


@pytest.mark.parametrize("check", tiers.CHECKS, ids=lambda check: check.__name__)
def test_on_sqlite(claim: Claim, check: Callable) -> None:
    """Checked by mutation, each failing its check: the rule's answer dropped in
    `limits.for_key` (2 started, not 4); the setter's `_free` giving no slot (0 started on the
    raise); `sqlite_has_room` always True (a call started while two were in flight against a
    limit of one); `_given_back` giving nothing back (the unstarted holder started); the clear
    deleting no row (the override kept); the registration step's `sqlite_limit` replaced by
    the task's own limit (worst 1: a call started with two in flight against one); and
    `sqlite_has_room` reading no override (worst 0)."""
    found = check(claim.app, claim.tasks, lambda: claimer(claim.app, Claimer))
    assert found == EXPECTED[check.__name__]


@pytest.mark.slow  # a second environment's start: ~4 s
@pytest.mark.e2e
def test_on_redis(redis_url: str) -> None:
    """The same checks on Redis. Checked by mutation, each failing this test: `redis_has_room`
    always True (the lower's and the two workers' checks); the registration step's
    `redis_limit` replaced by the task's own limit (worst 1); the setter's heads never read
    (0 started on the raise)."""
    assert redis_script("tiers.py", redis_url) == EXPECTED


def test_the_command_line_sets_shows_and_clears_and_top_reads_the_override(claim: Claim) -> None:
    """`python -m keyclaim limit`, as an operator types it, and the limit the live view shows
    for the key: the override over the task's own. Checked by mutation: without "limit" among
    keyclaim.__main__'s commands the set exited 2; with top's limit_for leaving its override out,
    the view's limit was 1 slot, not 3."""
    env = {**os.environ, **claim.environment()}

    def limit(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "keyclaim", "limit", *args, "--app", "claimapp.app"]
        return subprocess.run(command, cwd=HERE, env=env, capture_output=True, text=True)

    task = claim.tasks.call_keyed.task_id.key
    done = limit("set", "--task", "call_keyed", "account_id=acme", "--slots", "3")
    assert done.returncode == 0, done.stderr
    (line,) = overrides.read(claim.app)
    assert "acme" in limit("show").stdout
    assert top.limit_for(task, line, overrides.read(claim.app)[line]).slots == 3
    assert limit("clear", "--task", "call_keyed", "account_id=acme").returncode == 0
    assert overrides.read(claim.app) == {}
    assert top.limit_for(task, line).slots == 1
