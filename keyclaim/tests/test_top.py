"""The live view of the keys (`python -m keyclaim top`), on SQLite and on Redis.

It shows the keys that hold or wait in a live run, writes nothing, and reads as much with many
keys ever seen as with few.

top_live.py runs the command against a real worker whose calls the provider holds; top_cost.py
reads frames of a store with few keys ever used and with many. On Redis both run in an
environment with pynenc-redis (test_redis_claim.redis_script).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from claimkit import HERE
from test_redis_claim import redis_script

pytestmark = pytest.mark.slow  # real workers, and a thousand keys used once each

FEW, MANY = 10, 1010  # keys used once and ended; docs/limits.md has the figures at 10,000


def sqlite_script(script: str, *args: str) -> dict:
    """Run one of this folder's scripts with this python; what its last line printed (JSON)."""
    result = subprocess.run(
        [sys.executable, script, *args], cwd=HERE, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def assert_live_view(found: dict) -> None:
    """What top_live.py's run must show: each key's holders against its limit, its line, its
    rate, and the one worker with its settings; the same in the text frame; SIGINT: exit 0."""
    doc, keys, worker = found["json"], found["keys"], found["worker"]
    assert doc is not None, found["errors"]
    shown = {json.loads(k["key"])["account_id"]: k for k in doc["keys"]}
    assert set(shown) == set(keys.values())
    a, b, c = (shown[keys[name]] for name in "ABC")
    assert (a["task"], a["limit"], a["waiting"]) == (
        "claimapp.call_keyed",
        {"slots": 1, "rate": None, "per": 1.0},
        2,
    )
    (holder,) = a["holders"]
    assert (holder["slot"], holder["status"], holder["runner"]) == (
        0,
        "running",
        worker["runner_id"],
    )
    assert isinstance(holder["token"], int) and holder["held_for"] >= 0
    assert a["oldest_wait"] >= 0 and a["rate_used"] is None
    assert ([h["slot"] for h in b["holders"]], b["limit"]["slots"], b["waiting"]) == ([0, 1], 2, 1)
    assert {h["status"] for h in b["holders"]} == {"running"}
    assert (len(c["holders"]), c["waiting"], c["limit"]["rate"]) == (2, 0, 1)
    # Its one admission counts while younger than the window (4 s and 0.05 s of grace): about
    # as old as its holder's claim (dated again as the call started), whose age the frame shows.
    held = c["holders"][0]["held_for"]
    assert c["rate_used"] == (1 if held < 4.05 else 0 if held > 4.15 else c["rate_used"])
    (member,) = doc["fleet"]
    assert (member["runner_id"], member["pid"]) == (worker["runner_id"], worker["pid"])
    assert (member["settings"]["atomic claim"], member["threads"]) == ("on", 4)
    assert member["runner"] == "DrainingThreadRunner" and member["pynenc"]
    assert all(k in found["text"] for k in keys.values()) and "FLEET: 1 live" in found["text"]
    assert found["interrupted"] == 0


def assert_cost_flat(found: dict, counted: str) -> None:
    """The same reads with MANY keys ever used as with FEW, the same busy keys seen, and the
    whole store unchanged by each frame."""
    few, many = found["few"], found["many"]
    busy = {'{"account_id": "busy-one"}': [1, 2], '{"account_id": "busy-two"}': [2, 1]}
    assert few["keys"] == many["keys"] == busy
    assert few["reads"] == many["reads"] and few["reads"][counted] > 0
    assert few["store_counted"] == many["store_counted"]
    assert few["unchanged"] and many["unchanged"]


def test_top_shows_the_keys_of_a_live_run_on_sqlite(tmp_path: Path) -> None:
    """Checked by mutation: with the lines read without `GROUP BY line_key` (every key's calls
    counted as one line), key A showed 3 waiting and this test failed."""
    assert_live_view(sqlite_script("top_live.py", str(tmp_path)))


@pytest.mark.e2e
def test_top_shows_the_keys_of_a_live_run_on_redis(tmp_path: Path, redis_url: str) -> None:
    """The same on Redis. Checked by mutation: with every holder's slot read as 0 (the `slot`
    key left out), key B showed slots [0, 0] and this test failed."""
    assert_live_view(redis_script("top_live.py", str(tmp_path), redis_url))


def test_top_reads_as_much_with_a_thousand_keys_ever_seen_as_with_ten_on_sqlite(
    tmp_path: Path,
) -> None:
    """Statements and SQLite's VM steps (rows visited) per frame. Checked by mutation, each
    failing this test: a frame that also reads every call's key argument (pynenc's
    `arg_key = 'account_id'` rows, by its own index) took 1,131 VM steps with 10 keys ever seen
    and 7,131 with 1,010; a frame that writes (a count of its views in the claim's counts, in
    place of `PRAGMA query_only`) left the store changed."""
    assert_cost_flat(sqlite_script("top_cost.py", str(tmp_path), str(FEW), str(MANY)), "steps")


@pytest.mark.e2e
def test_top_reads_as_much_with_a_thousand_keys_ever_seen_as_with_ten_on_redis(
    tmp_path: Path, redis_url: str
) -> None:
    """Commands per frame, as top counts them and as Redis counts them. Checked by mutation,
    each failing this test: the holders found by SCAN over the claim's `holds:*` keys instead
    of its set of holders (Redis counted 18 commands with 10 keys ever seen, 25 with 1,010); a
    frame that writes (HINCRBY of a count of its views) left the store changed."""
    found = redis_script("top_cost.py", str(tmp_path), str(FEW), str(MANY), redis_url)
    assert_cost_flat(found, "commands")
    # Redis counted the view's commands, the fleet's records and the overrides (an HGETALL each).
    assert found["few"]["store_counted"] == found["few"]["reads"]["commands"] + 2
