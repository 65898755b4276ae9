"""The claim on Redis: the forced races of test_sqlite_claim.py, each with one winner.

There a claimer is not blocked: its EXEC fails and it tries again on fresh data.

pynenc imports every installed backend plugin at start, so pynenc-redis stays out of the
environment the other tests run in: the races run in a script of their own, in an environment
that has it (uv's, made for it, unless this one already has the plugin).
"""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from claimkit import HERE

from keyclaim.versions import TESTED

# keyclaim.redis_claim's bounds, read without importing it (it needs the plugin).
BACKOFF_SECONDS = (0.001, 0.05)
LIBRARY = HERE.parent


def with_redis_plugin() -> list[str]:
    """A python that has pynenc-redis: this one, or one uv builds with the tested versions."""
    if importlib.util.find_spec("pynenc_redis") is not None:
        return [sys.executable]
    if shutil.which("uv") is None:
        pytest.skip("pynenc-redis is not installed and uv is not there to add it")
    ((pynenc, plugin),) = TESTED["redis"]
    return [
        *("uv", "run", "--isolated", "--no-project", "--with-editable", str(LIBRARY)),
        *("--with", f"pynenc=={pynenc}", "--with", f"pynenc-redis=={plugin}"),
        "python",
    ]


def redis_script(script: str, *args: str, timeout: float = 300) -> dict:
    """Run one of this folder's scripts with pynenc-redis; what its last line printed (JSON)."""
    result = subprocess.run(
        [*with_redis_plugin(), script, *args],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # a second environment's start: ~3 s
@pytest.mark.e2e
def test_on_redis_the_same_race_lets_exactly_one_worker_in(redis_url: str) -> None:
    """redis_race.py forces the same interleaving on Redis, where a claimer is not
    blocked but its EXEC fails and it tries again on fresh data. Checked by mutation: with only
    the invocation's own status watched (the key's holder and token counter left out of WATCH),
    claimer 1's EXEC went through and both claimers were granted; with the holder's key and
    status left out of the producer's WATCH, its call was parked in a line with no holder,
    never to run; without the pause between tries, `pauses` is empty; with the token floor
    watched by the claim again, another key's release sent the claim back (2 tries); with the
    key's line watched again, the call parked meanwhile sent it back (2 tries)."""
    found = redis_script("redis_race.py", redis_url)

    race = found["race"]
    first, second = race["ids"]
    assert (race["one"], race["two"]) == ([], [second])
    assert race["statuses"] == ["registered", "pending"]  # the loser waits in the key's line
    assert race["tries_one"] == 2  # its first EXEC failed: claimer 2's claim changed a watched key

    # A producer parks while the holder finishes: its EXEC fails, it reads again, and its call
    # takes the freed key instead of waiting in a line nobody will hand on.
    park = found["park"]
    assert park["producer_reads"] == 2
    assert (park["status"], park["queued"], park["waiting"], park["taken"]) == (
        "registered",
        1,
        0,
        True,
    )

    # A claim whose watched keys change on every try gives up, and its invocation is not lost;
    # between tries it pauses, longer each time (up to a bound), with some jitter.
    stuck = found["contention"]
    assert (stuck["taken"], stuck["tries"], stuck["status"]) == ([], 5, "registered")
    assert stuck["queued"] == 1
    assert stuck["counts"] == {"claims": 1, "retries": 5}
    first, longest = BACKOFF_SECONDS
    bounds = [min(longest, first * 2**n) for n in range(5)]
    assert all(b / 2 <= p <= b for p, b in zip(stuck["pauses"], bounds, strict=True))

    # Another key's last release raises the token floor under a claim: no conflict (the floor,
    # which every key's release writes, made claims of unrelated keys retry: 300-660 a run).
    assert found["unrelated"] == {"taken": True, "tries": 1, "retries": 0}
    # Nor does a call of the same key parking in its line while the key's call is claimed.
    assert found["parked"] == {"taken": True, "tries": 1, "waiting": 1}

    # A holder ended without a hand-over is let go by the next registration for its key; one a
    # dead worker took off the queue is queued again by the sweep, on its second sighting.
    assert found["healing"] == {
        "after_ended_taken": True,
        "queued_after_one_sweep": 0,
        "lost_taken": True,
    }


@pytest.mark.slow  # a second environment's start: ~4 s
@pytest.mark.e2e
def test_on_redis_the_claim_keeps_nothing_per_call_or_idle_key_but_the_floor(
    redis_url: str,
) -> None:
    """redis_state.py, test_claim_state.py's twins on Redis: five calls of two keys (one of
    two slots) ended SUCCESS or FAILED leave no per-call field or per-key key but the floor
    (the highest token issued), and a late outcome is not stored; an idle key's next token,
    with Redis TIME an hour back, is still larger; a 2 KiB id is refused and no Redis key
    changes, and one failed at run time leaves nothing; a silent runner's beat and a dead
    process's fleet record go with the next sweep; a rated call's admission, set back an hour
    after its claim, still counts while its call has not started (a second call is not
    taken), and pruned, is added again by its RUNNING, dated now, with an expiry. Checked by
    mutation, each failing this test: `_plan_release` without its two HDELs (5 fields of
    each hash left); the first token from TIME alone (the second token an hour smaller); the
    length checks removed (not refused); the sweep's prunes left out (the beat and the record
    kept); the restamp left out of `set_invocation_status` (no admission); the unstarted
    holders left out of keyclaim.decision.rate_free_at (the second call taken); the
    restamp's EXPIRE left out (a key kept for good)."""
    found = redis_script("redis_state.py", redis_url)
    final = found["final"]
    assert (final["kept"], final["late"]) == ({}, "success")
    assert final["floor"] == max(final["tokens"])
    first, second = found["idle"]
    assert second > first
    refused = found["refused"]
    assert "2048 bytes" in refused["refused"] and refused["unchanged"]
    assert (refused["status"], refused["kept"]) == ("failed", {})
    assert found["stopped"] == {"before": [2, 1], "after": [1, 0], "kept": True}
    restamped = found["restamped"]
    assert restamped["after"] >= restamped["before"] > restamped["back"] + 3000
    assert (restamped["second"], restamped["expires"]) == (0, True)


@pytest.mark.slow  # a second environment's start, and a worker's: ~8 s
@pytest.mark.e2e
def test_on_redis_the_claim_looks_up_no_trigger_and_a_workers_trigger_still_fires(
    redis_url: str, tmp_path: Path
) -> None:
    """redis_quiet.py, the quiet trigger on Redis (selected with the claim): twenty calls
    registered report their statuses; pynenc-redis's trigger looks up each one's conditions,
    the quiet one none. A real worker runs triggerapp.app on Redis: this process, which
    registered no trigger, finds the worker's in the store, and `follow` runs once after
    `lead`. Checked by mutation, each failing this test: `sourced_in_store` always false (the
    worker's trigger never seen), and `any_sourced` always true (20 lookups)."""
    found = redis_script("redis_quiet.py", redis_url, str(tmp_path))
    assert found["stock"] >= 20 and found["quiet"] == 0
    assert (found["trigger"], found["seen"], found["followed"]) == ("QuietRedisTrigger", True, 1)


@pytest.mark.slow  # a second environment's start, and four processes: ~10 s
@pytest.mark.e2e
def test_on_redis_a_source_task_learnt_late_is_still_reported(redis_url: str) -> None:
    """redis_quiet_late.py, learnt: a process that knows only claimapp's tasks looks at the
    store (a status report), then reads a call of triggerapp's `lead` (learning of it) and
    reports its SUCCESS, well within a second of that look; `follow`'s condition on it was in
    the store before (a stock process's). pynenc-redis's trigger records the valid condition,
    and so must the quiet one (it
    had recorded none: its last look, at the tasks it knew then, held for a second). Checked by
    mutation: without `QuietRedisTrigger.any_sourced` (the look made again at once when a task
    is learnt), the quiet trigger recorded 0."""
    assert redis_script("redis_quiet_late.py", redis_url, "learnt") == {
        "RedisTrigger": 1,
        "QuietRedisTrigger": 1,
    }


@pytest.mark.slow  # a second environment's start, and four processes: ~10 s
@pytest.mark.e2e
def test_on_redis_a_swept_call_of_a_task_never_read_here_is_still_reported(
    redis_url: str,
) -> None:
    """redis_quiet_late.py, swept: a process that knows only claimapp's tasks reports a call of
    triggerapp's `lead` REROUTED by its id alone, as its sweep reports a dead runner's call;
    `follow`'s condition on it is in the store. pynenc-redis's trigger reads the call back,
    learns its task and records the condition; the quiet one never reads it, and finds the
    mark a claim process's registration leaves (`QuietRedisTrigger`'s
    `_register_source_task_condition`). Checked by mutation: without the mark, the quiet one
    recorded none (it looked only at the tasks it knew: on every sweep, until this process
    reads a call of `lead`)."""
    assert redis_script("redis_quiet_late.py", redis_url, "swept") == {
        "RedisTrigger": 1,
        "QuietRedisTrigger": 1,
    }


@pytest.mark.slow  # a second environment's start, and four processes: ~10 s
@pytest.mark.e2e
@pytest.mark.xfail(strict=True, reason="the quiet trigger looks only at the tasks it knows")
def test_on_redis_a_swept_call_is_reported_beside_a_stock_process(redis_url: str) -> None:
    """redis_quiet_late.py, swept-stock: as the test before, with `follow`'s condition
    registered by a stock process (pynenc-redis's own trigger, beside the claim's), which
    leaves no mark. Expected to fail: the quiet one looks only at the mark and at the tasks
    its process knows."""
    assert redis_script("redis_quiet_late.py", redis_url, "swept-stock") == {
        "RedisTrigger": 1,
        "QuietRedisTrigger": 1,
    }


@pytest.mark.slow  # a second environment's start: ~3 s
@pytest.mark.e2e
def test_on_redis_the_quiet_look_bears_tasks_learnt_meanwhile(redis_url: str) -> None:
    """redis_quiet_race.py: one thread registers 3,000 tasks while another asks `any_sourced`
    (each report's first question) all the while, threads switched every microsecond: no look
    raises. Checked by mutation: iterating `self.app.tasks` itself in `sourced_in_store` (as
    first written), 93 to 1,203 looks raised "dictionary changed size during iteration"."""
    found = redis_script("redis_quiet_race.py", redis_url)
    assert (found["tasks"], found["raised"]) == (3000, 0), found
