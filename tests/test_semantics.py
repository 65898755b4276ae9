"""What pynenc's concurrency settings really guarantee, pinned down without relying on timing.

The provider's /pause holds every call in flight until /resume, so each test decides when
the first call for an account ends; the worker is started only when a test wants one.
Each test uses account names of its own.
"""

import itertools
from collections.abc import Callable

import pytest
from pynenc.invocation.dist_invocation import ReusedInvocation
from pynenc.invocation.status import InvocationStatus as S

import tasks
from demo.processes import wait_until
from demo.provider import Provider
from helpers import (
    WAIT,
    account,
    calls_for,
    counts,
    history,
    paused,
    status_of,
    unique,
    wait_final,
    wait_in_flight,
)


def test_registration_dedupe_collapses_duplicates_while_queued(
    provider: Provider, start_worker: Callable
) -> None:
    acct = unique()
    first = tasks.refresh_once(acct)
    duplicates = [tasks.refresh_once(acct) for _ in range(7)]

    assert not isinstance(first, ReusedInvocation)
    assert all(isinstance(d, ReusedInvocation) for d in duplicates)
    assert {d.invocation_id for d in duplicates} == {first.invocation_id}
    assert status_of(first.invocation_id) == S.REGISTERED  # no worker yet: still queued

    start_worker()
    assert wait_final(first.invocation_id) == [S.SUCCESS]
    assert account(provider, acct)["calls"] == 1


def test_late_duplicates_are_new_invocations_that_run_one_after_another(
    provider: Provider, start_worker: Callable
) -> None:
    start_worker()
    acct = unique()
    with paused(provider):
        first = tasks.refresh_once(acct)
        wait_in_flight(provider, acct)
        late = tasks.refresh_once(acct)

        # Registration dedupe looks only at REGISTERED invocations; the first is RUNNING.
        assert not isinstance(late, ReusedInvocation)
        assert late.invocation_id != first.invocation_id
        # The running guard holds it back while the first is in flight.
        wait_until(lambda: S.REROUTED in history(late.invocation_id), WAIT, "a reroute")
        assert account(provider, acct) == counts(calls=1, in_flight=1)

        # Once rerouted, the queued duplicate is no longer REGISTERED either: the next
        # event makes yet another invocation. Duplicates pile up, one per reroute.
        wait_until(lambda: status_of(late.invocation_id) != S.REGISTERED, WAIT, "a pick-up")
        third = tasks.refresh_once(acct)
        assert not isinstance(third, ReusedInvocation)
        assert third.invocation_id not in (first.invocation_id, late.invocation_id)

    ids = (first.invocation_id, late.invocation_id, third.invocation_id)
    assert wait_final(*ids) == [S.SUCCESS] * 3
    assert account(provider, acct) == counts(calls=3)
    calls = sorted(calls_for(provider, acct), key=lambda c: c["start"])
    assert all(b["start"] >= a["end"] for a, b in itertools.pairwise(calls))


def test_drop_finishes_a_blocked_invocation_without_calling_the_provider(
    provider: Provider, start_worker: Callable
) -> None:
    start_worker()
    acct = unique()
    with paused(provider):
        first = tasks.call_keyed_drop(acct, "fetch_profile")
        wait_in_flight(provider, acct)
        blocked = tasks.call_keyed_drop(acct, "list_invoices")
        assert wait_final(blocked.invocation_id) == [S.CONCURRENCY_CONTROLLED_FINAL]
        assert account(provider, acct)["calls"] == 1

    assert wait_final(first.invocation_id) == [S.SUCCESS]
    assert first.result == "ok"
    # A dropped invocation has no result: asking for one raises, it does not wait.
    with pytest.raises(KeyError):
        _ = blocked.result
    assert [c["op"] for c in calls_for(provider, acct)] == ["fetch_profile"]


def test_reroute_sends_a_blocked_invocation_back_until_its_key_is_free(
    provider: Provider, start_worker: Callable
) -> None:
    start_worker()
    acct = unique()
    with paused(provider):
        first = tasks.call_keyed(acct, "fetch_profile")
        wait_in_flight(provider, acct)
        blocked = tasks.call_keyed(acct, "list_invoices")
        wait_until(lambda: S.REROUTED in history(blocked.invocation_id), WAIT, "a reroute")
        assert status_of(blocked.invocation_id) != S.RUNNING

    assert wait_final(first.invocation_id, blocked.invocation_id) == [S.SUCCESS, S.SUCCESS]
    assert account(provider, acct) == counts(calls=2)
    assert [c["op"] for c in calls_for(provider, acct)] == ["fetch_profile", "list_invoices"]


def test_keys_serialize_one_account_and_run_different_accounts_in_parallel(
    provider: Provider, start_worker: Callable
) -> None:
    start_worker()
    acme, globex = unique("acme"), unique("globex")
    with paused(provider):
        a1 = tasks.call_keyed(acme, "fetch_profile")
        wait_in_flight(provider, acme)
        a2 = tasks.call_keyed(acme, "list_invoices")  # same key, another op
        g1 = tasks.call_keyed(globex, "fetch_profile")  # another key, same op
        wait_in_flight(provider, globex)
        wait_until(lambda: S.REROUTED in history(a2.invocation_id), WAIT, "a reroute")

        # Both accounts are in flight at once; the second acme call is not.
        assert account(provider, acme) == counts(calls=1, in_flight=1)
        assert account(provider, globex) == counts(calls=1, in_flight=1)

    assert wait_final(a1.invocation_id, a2.invocation_id, g1.invocation_id) == [S.SUCCESS] * 3
    assert account(provider, acme) == counts(calls=2)
    assert account(provider, globex)["collisions"] == 0


def test_without_control_the_same_account_runs_twice_at_once(
    provider: Provider, start_worker: Callable
) -> None:
    """The baseline the other tests are measured against: the collision is real."""
    start_worker()
    acct = unique()
    with paused(provider):
        first = tasks.call_unsafe(acct, "fetch_profile")
        second = tasks.call_unsafe(acct, "list_invoices")
        wait_in_flight(provider, acct, 2)
    assert wait_final(first.invocation_id, second.invocation_id) == [S.SUCCESS, S.SUCCESS]
    assert account(provider, acct) == counts(calls=2, collisions=1)


def test_batch_enqueue_skips_the_key_guard(provider: Provider, start_worker: Callable) -> None:
    """A trap: parallelize() registers invocations without indexing their key arguments
    (BaseOrchestrator.route_calls), so running_concurrency=KEYS cannot see them.

    If a pynenc release fixes this, the two calls never overlap and this test fails,
    which is the signal to update the README.
    """
    start_worker()
    acct = unique()
    with paused(provider):
        group = tasks.call_keyed.parallelize(
            [
                {"account_id": acct, "op": "fetch_profile"},
                {"account_id": acct, "op": "list_invoices"},
            ]
        )
        wait_in_flight(provider, acct, 2)
    ids = [inv.invocation_id for inv in group.invocations]
    assert wait_final(*ids) == [S.SUCCESS, S.SUCCESS]
    assert account(provider, acct) == counts(calls=2, collisions=1)
