"""A lower's given-back call claimed after the lower, and a raise racing that claim.

The checks are given_back_race.py's: on the test's SQLite file, and on Redis as a script.
"""

import pytest
from claimkit import Claim
from given_back_race import given_back_keeps_its_place
from test_redis_claim import redis_script
from test_sqlite_claim import claimer

from keyclaim.sqlite_claim import AtomicClaimSQLiteOrchestrator as Claimer

IN_ORDER = {"retrieved": "c2", "verdict": "PARK", "before": ["c2", "c3", "c4"]}


def test_on_sqlite_the_given_back_call_keeps_its_place(claim: Claim) -> None:
    """Checked by mutation: `_park` inserting OR REPLACE (a new seq) sent c2 to the end of the
    line, after c3 and c4."""
    found = given_back_keeps_its_place(claim.app, claim.tasks, lambda: claimer(claim.app, Claimer))
    assert found == {**IN_ORDER, "after": IN_ORDER["before"]}


@pytest.mark.slow  # a second environment's start: ~4 s
@pytest.mark.e2e
def test_on_redis_the_given_back_call_keeps_its_place_and_a_racing_raise_loses_none(
    redis_url: str,
) -> None:
    """c2, given back by a lower, keeps its place when its worker's claim parks it, and a raise
    racing that park loses no call. Checked against the park before it (LREM and RPUSH of a
    call already in line): c2 went to the end ([c3, c4, c2]), and with the park between the
    raise's read and its EXEC, c3 was popped while c2 started: c3 neither held, queued nor in
    line, statuses [success x3, registered, success], waiting 1."""
    found = redis_script("given_back_race.py", redis_url)
    assert found["given_back_keeps_its_place"]["after"] == IN_ORDER["before"]
    raced = found["raise_racing_a_park"]
    assert (raced["statuses"], raced["waiting"], raced["line"]) == (["success"] * 5, 0, [])
