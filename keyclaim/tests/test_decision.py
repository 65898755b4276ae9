"""The claim's decision on its own: what one step writes, given what it read. No store."""

from datetime import UTC, datetime

import pytest
from pynenc.invocation.status import InvocationStatus as S
from pynenc.invocation.status import InvocationStatusRecord

from keyclaim.clock import first_token
from keyclaim.config import window_problem
from keyclaim.decision import Holder, Verdict, decide
from keyclaim.keys import key_identity

pytestmark = pytest.mark.unit  # no process, no network

NOW = 1000.0  # on the store's clock
WINDOW = 15.0


def record(status: S, runner: str = "r1") -> InvocationStatusRecord:
    return InvocationStatusRecord(status, runner, datetime.now(UTC))


def holder(status: S = S.RUNNING, beat: float | None = NOW) -> Holder:
    return Holder("held", record(status), beat)


def test_a_free_key_is_claimed_and_taken() -> None:
    decision = decide("me", record(S.REGISTERED, None), None, "r2", NOW - WINDOW, waits=True)
    assert decision.verdict is Verdict.RUN and decision.takes_key
    assert [(i, r.status, r.runner_id) for i, r in decision.writes] == [("me", S.PENDING, "r2")]


def test_the_keys_own_holder_is_claimed_without_taking_the_key_again() -> None:
    mine = Holder("me", record(S.REROUTED), NOW)
    decision = decide("me", record(S.REROUTED), mine, "r2", NOW - WINDOW, waits=True)
    assert decision.verdict is Verdict.RUN and not decision.takes_key


@pytest.mark.parametrize("waits, verdict", [(True, Verdict.PARK), (False, Verdict.DROP)])
def test_a_busy_key_parks_a_waiting_call_and_drops_the_others(
    waits: bool, verdict: Verdict
) -> None:
    decision = decide("me", record(S.REGISTERED, None), holder(), "r2", NOW - WINDOW, waits)
    assert decision.verdict is verdict and decision.recovered == []
    dropped = [r.status for _, r in decision.writes]
    assert dropped == ([] if waits else [S.CONCURRENCY_CONTROLLED_FINAL])


def test_a_call_pynenc_forbids_to_drop_waits_instead() -> None:
    """REROUTED may only become PENDING: a dropping task's call waits in line."""
    decision = decide("me", record(S.REROUTED), holder(), "r2", NOW - WINDOW, waits=False)
    assert decision.verdict is Verdict.PARK and decision.writes == []


def test_a_silent_holder_is_recovered_and_keeps_its_key() -> None:
    silent = holder(beat=NOW - WINDOW - 1)
    decision = decide("me", record(S.REGISTERED, None), silent, "r2", NOW - WINDOW, waits=True)
    assert decision.verdict is Verdict.PARK and decision.recovered == ["held"]
    assert [(i, r.status) for i, r in decision.writes] == [
        ("held", S.RUNNING_RECOVERY),
        ("held", S.REROUTED),
    ]


@pytest.mark.parametrize("beat", [None, NOW - 1], ids=["never beat", "beating"])
def test_a_holder_with_no_beat_or_a_recent_one_is_not_taken_for_dead(beat: float | None) -> None:
    decision = decide("me", record(S.REGISTERED, None), holder(beat=beat), "r2", NOW - WINDOW, True)
    assert decision.recovered == [] and decision.writes == []


def test_a_queued_holder_is_never_silent() -> None:
    """Between two statuses it waits on no runner: its runner's beat says nothing of it."""
    decision = decide("me", record(S.REGISTERED, None), holder(S.REROUTED, 0.0), "r2", NOW, True)
    assert decision.recovered == []


def test_the_blocking_path_leaves_a_busy_keys_call_as_it_is() -> None:
    decision = decide("me", record(S.REGISTERED, None), holder(), "r2", NOW, False, Verdict.LEAVE)
    assert decision.verdict is Verdict.LEAVE and decision.writes == []


@pytest.mark.parametrize("status", [S.RUNNING, S.SUCCESS, S.PENDING])
def test_what_is_not_available_for_run_is_skipped(status: S) -> None:
    assert decide("me", record(status), None, "r2", NOW, True).verdict is Verdict.SKIP


def test_values_that_are_one_account_to_the_provider_are_one_key() -> None:
    assert key_identity({"account_id": "42"}) == key_identity({"account_id": '"42"'})
    assert key_identity({"account_id": '"a"'}) != key_identity({"account_id": '"b"'})


def test_a_keys_first_token_is_the_time_in_microseconds() -> None:
    assert first_token(1.5) == 1_500_000 and first_token(NOW + 1) > first_token(NOW)


@pytest.mark.parametrize(
    "dead_after, beat_every, longest, sound",
    [(15, 3.75, 10, True), (10, 2.5, 10, False), (3, 1.5, 2, False), (15, 3.75, None, False)],
)
def test_windows_that_would_take_a_live_runner_for_dead_are_named(
    dead_after: float, beat_every: float, longest: float | None, sound: bool
) -> None:
    why = window_problem(dead_after, beat_every, longest)
    assert (why is None) is sound
    assert why is None or "\n" not in why


def slotted(invocation_id: str, slot: int, beat: float | None = NOW) -> Holder:
    return Holder(invocation_id, record(S.RUNNING), beat, slot)


def test_with_two_slots_a_second_call_takes_the_free_slot_and_a_third_waits() -> None:
    one = [slotted("a", 0)]
    second = decide("me", record(S.REGISTERED, None), one, "r2", NOW - WINDOW, True, slots=2)
    assert (second.verdict, second.takes_key, second.slot) == (Verdict.RUN, True, 1)
    two = [slotted("a", 0), slotted("b", 1)]
    third = decide("me", record(S.REGISTERED, None), two, "r2", NOW - WINDOW, True, slots=2)
    assert third.verdict is Verdict.PARK and third.writes == []
    # The slot a holder frees is the one the next call takes: slot 0 here.
    after = decide("me", record(S.REGISTERED, None), [slotted("b", 1)], "r2", 0.0, True, slots=2)
    assert after.slot == 0


def test_a_spent_rate_holds_the_slot_and_waits_until_the_window_frees() -> None:
    waits = decide(
        "me", record(S.REGISTERED, None), None, "r2", NOW - WINDOW, True, free_at=NOW + 0.5
    )
    assert (waits.verdict, waits.takes_key, waits.due, waits.writes) == (
        Verdict.WAIT,
        True,
        NOW + 0.5,
        [],
    )


def test_every_silent_holder_of_a_full_key_is_recovered_and_keeps_its_slot() -> None:
    silent = [slotted("a", 0, NOW - 2 * WINDOW), slotted("b", 1, NOW - 2 * WINDOW)]
    decision = decide("me", record(S.REGISTERED, None), silent, "r2", NOW - WINDOW, True, slots=2)
    assert decision.verdict is Verdict.PARK and decision.recovered == ["a", "b"]
