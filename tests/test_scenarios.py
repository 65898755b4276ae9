"""What each scenario sends, its physical floor, and how a run is judged against its promise."""

import dataclasses
import logging
import uuid
from collections import Counter
from types import SimpleNamespace

import pytest
from pynenc import PynencBuilder
from pynenc.conf.config_task import ConcurrencyControlType as Mode

import keyclaim
import tasks
from demo import noisy, report, scenarios, steps
from demo.outcome import Outcome
from demo.scenarios import Scenario, Shape
from enqueue import ARTICLE, SCENARIOS
from tools import tables

pytestmark = pytest.mark.unit  # no process, no network

DEFAULT = Shape()


def test_a_to_c_send_every_op_for_every_account() -> None:
    for key in ("unsafe", "keyed", "drop"):
        payloads = DEFAULT.payloads(SCENARIOS[key])
        assert len(payloads) == 12
        pairs = {(p["account_id"], p["op"]) for p in payloads}
        assert len(pairs) == 12
        assert {a for a, _ in pairs} == {"acme", "globex", "initech"}
        assert {op for _, op in pairs} == {
            "fetch_profile",
            "list_invoices",
            "refresh_usage",
            "update_metadata",
        }


def test_d_sends_eight_refreshes_per_account_in_bursts() -> None:
    payloads = DEFAULT.payloads(SCENARIOS["dedupe"])
    assert Counter(p["account_id"] for p in payloads) == {"acme": 8, "globex": 8, "initech": 8}
    assert [p["account_id"] for p in payloads[:8]] == ["acme"] * 8


def test_scaled_shapes_add_numbered_accounts_and_ops() -> None:
    shape = Shape(accounts=30, ops=6)
    payloads = shape.payloads(SCENARIOS["keyed"])
    assert len(payloads) == 180
    assert len({p["account_id"] for p in payloads}) == 30
    assert len({p["op"] for p in payloads}) == 6


@pytest.mark.parametrize(
    "key, shape, floor",
    [
        ("unsafe", DEFAULT, 0.8),  # 12 calls on 8 threads: two waves
        ("keyed", DEFAULT, 1.6),  # four ops in a row per account
        ("drop", DEFAULT, 0.4),
        ("dedupe", DEFAULT, 0.4),
        ("keyed", Shape(accounts=30, ops=4, hold=0.1), 1.5),  # 120 calls on 8 threads: 15 waves
        ("keyed", Shape(accounts=30, ops=4, hold=0.1, workers=3), 0.5),
        # F: 8 ops per account, two at a time: four pairs in a row.
        ("slots", DEFAULT, 1.6),
        # G: two at a time too, and at most 5 starts in any second: the 6th waits for the
        # first's start + 1 s (1.0 instead of 0.8), the 7th and 8th for a free slot.
        ("rate", DEFAULT, 1.8),
        # 30 accounts on 8 threads, in enqueue order: four accounts' pairs at a time, 7.5
        # rounds of 0.4 s (a packing out of order could reach 240 x 0.1 s / 8 = 3.0 s).
        ("slots", Shape(accounts=30, ops=4, hold=0.1), 3.2),
    ],
)
def test_floor(key: str, shape: Shape, floor: float) -> None:
    assert shape.floor(SCENARIOS[key]) == pytest.approx(floor)


def outcome(key: str | Scenario, **fields: object) -> Outcome:
    base: dict[str, object] = dict(
        scenario=SCENARIOS[key] if isinstance(key, str) else key,
        shape=DEFAULT,
        enqueued=12,
        invocations=12,
        statuses=Counter(success=12),
        calls=12,
        collisions=0,
        per_account={},
        elapsed=2.0,
        timeline=[],
        window=(0.0, 2.0),
    )
    return Outcome(**(base | fields))


def test_a_holds_with_collisions_but_not_with_missing_calls() -> None:
    assert outcome("unsafe", collisions=9).broken() == []
    assert outcome("unsafe", calls=11).broken()


def test_b_breaks_on_a_collision_or_a_missing_call() -> None:
    assert outcome("keyed").broken() == []
    assert "1 collisions" in outcome("keyed", collisions=1).broken()[0]
    assert outcome("keyed", calls=11).broken()


def test_a_replayed_or_409_call_is_not_an_applied_one() -> None:
    """A call answered from the provider's store, or refused with 409, reached it and was not
    applied: twelve applied and one replayed keep B's promise, and the summary says both."""
    again = outcome("keyed", calls=14, replayed=1, conflicts=1)
    assert (again.applied, again.broken()) == (12, [])
    assert outcome("keyed", calls=13, replayed=0).broken() == ["13 calls for 12 enqueued"]
    head = report.summary(again).splitlines()[2]
    assert head.startswith("  12 enqueued -> 14 calls, 0 collisions, 1 replayed, 1 refused with")


def test_c_counts_dropped_as_dropped_not_as_errors() -> None:
    dropped = Counter(success=3, concurrency_controlled_final=9)
    ok = outcome("drop", calls=3, statuses=dropped)
    assert (ok.dropped, ok.failed, ok.broken()) == (9, 0, [])
    assert outcome("drop", calls=4, statuses=dropped).broken()  # a call nobody accounts for


def test_d_counts_deduped_and_allows_late_duplicates_that_ran_once() -> None:
    ok = outcome("dedupe", enqueued=24, invocations=4, calls=4, statuses=Counter(success=4))
    ok.late = ["acme: new invocation, the earlier one was already running"]
    assert (ok.deduped, ok.extra_calls, ok.broken()) == (20, 1, [])
    twice = outcome("dedupe", enqueued=24, invocations=3, calls=4, statuses=Counter(success=3))
    assert twice.broken() == ["4 calls for 3 invocations"]


def test_unfinished_invocations_break_every_scenario() -> None:
    for key in SCENARIOS:
        stuck = outcome(key, unfinished={"inv-1": "rerouted"})
        assert "never finished (inv-1 rerouted)" in stuck.broken()[0]


def test_summary_has_the_articles_shape() -> None:
    text = report.summary(
        outcome("keyed", per_account={"acme": {"calls": 4, "collisions": 0, "in_flight": 0}})
    )
    assert "=== B. keyed — running_concurrency=KEYS, reroute=True ===" in text
    assert "  12 enqueued -> 12 calls, 0 collisions, 2.00s (floor 1.60s, 80%)" in text
    assert "  OK acme     calls=4  collisions=0" in text


def test_distribution_reports_min_typical_max() -> None:
    runs = [outcome("unsafe", collisions=c) for c in (9, 6, 9)]
    runs.append(outcome("keyed", collisions=1))
    lines = tables.distribution(runs, ARTICLE).splitlines()
    assert "=== 3 rounds: min / typical / max ===" in lines
    a_row = next(line for line in lines if line.startswith("A."))
    b_row = next(line for line in lines if line.startswith("B."))
    assert a_row.split()[2:4] == ["12/12/12", "6/9/9"]  # calls, collisions
    assert b_row.endswith("broken in 1 of 1")
    assert not any(line.startswith("C.") for line in lines)
    assert lines[-1].startswith("totals: 1 collisions under KEYS (B 1, C 0, D 0), 0 extra calls")


def test_distribution_keeps_four_digit_counts_apart() -> None:
    """Mutation checked: fixed 14-wide columns print `2000/2000/20001496/1496/1496`."""
    big = outcome("unsafe", calls=2000, collisions=1496, enqueued=2000, invocations=2000)
    row = next(line for line in tables.distribution([big], ARTICLE).splitlines() if "A." in line)
    assert row.split()[2:4] == ["2000/2000/2000", "1496/1496/1496"]


# A scenario is one entry plus its task: this one exists only here. Each account gets the
# same op twice, keyed and rerouted, so both calls must run, one after the other.
def twice_each(shape: Shape) -> list[dict[str, str]]:
    accounts = scenarios.account_names(shape.accounts)
    return [{"account_id": a, "op": "sync"} for a in accounts for _ in range(2)]


class Fake:
    """A task with a real task's settings (`like`), in an app of its own that only logs: its
    promises are that task's, and calling it enqueues nothing."""

    def __init__(self, like: object) -> None:
        self.conf, self.task_id = like.conf, SimpleNamespace(key=f"tests.{type(self).__name__}")
        self.app = SimpleNamespace(logger=logging.getLogger("tests"), orchestrator=self)


class SyncTwice(Fake):
    """The entry's task, as tasks.py would define it, keyed and rerouted like call_keyed: here
    it only counts what it was sent."""

    def __init__(self) -> None:
        super().__init__(tasks.call_keyed)
        self.sent: list[dict[str, str]] = []

    def __call__(self, **payload: str) -> SimpleNamespace:
        self.sent.append(payload)
        return SimpleNamespace(invocation_id=f"inv-{len(self.sent)}")


TWICE = Scenario("Z", "twice", "the same op twice, keyed", SyncTwice(), twice_each)


class Registry(Fake):
    """A task whose duplicates merge into the invocation registered last for their account,
    as registration_concurrency=KEYS does while it is still queued (refresh_once's settings)."""

    def __init__(self, merged_after: int) -> None:
        super().__init__(tasks.refresh_once)
        self.calls, self.merged_after = 0, merged_after

    def __call__(self, account_id: str) -> SimpleNamespace:
        self.calls += 1
        number = 1 if self.calls <= self.merged_after else 2  # the first was picked up
        return SimpleNamespace(invocation_id=f"{account_id}-{number}")

    def get_invocation_status(self, invocation_id: str) -> SimpleNamespace:
        return SimpleNamespace(value="running")


def test_merged_duplicates_count_once_even_into_a_late_invocation() -> None:
    """D's burst: 8 refreshes, the first 3 merge into invocation 1, which a worker then picks
    up; the next makes invocation 2, and the last 4 merge into that one."""
    burst = dataclasses.replace(SCENARIOS["dedupe"], task=Registry(merged_after=3))
    sent = steps.enqueue(burst, Shape(accounts=1))
    assert sent.ids == ["acme-1", "acme-2"]
    assert sent.late == ["acme: new invocation, the earlier one was already running"]


def test_a_new_scenario_is_one_entry_plus_its_task() -> None:
    shape = Shape(ops=2)
    task = SyncTwice()
    sent = steps.enqueue(dataclasses.replace(TWICE, task=task), shape)
    assert (len(sent.ids), sent.late) == (6, [])
    assert task.sent[:2] == [{"account_id": "acme", "op": "sync"}] * 2
    # Keyed: one account's two calls run in a row, so the floor is two holds.
    assert shape.floor(TWICE) == pytest.approx(2 * shape.hold)

    per_account = {a: {"calls": 2, "collisions": 0, "in_flight": 0} for a in scenarios.ACCOUNTS}
    kept = outcome(TWICE, shape=shape, enqueued=6, invocations=6, calls=6, per_account=per_account)
    assert kept.broken() == []
    collided = outcome(TWICE, shape=shape, enqueued=6, invocations=6, calls=6, collisions=1)
    assert collided.broken() == ["1 collisions under running_concurrency=KEYS"]
    assert outcome(TWICE, shape=shape, enqueued=6, calls=5).broken() == ["5 calls for 6 enqueued"]

    text = report.summary(kept)
    assert "=== Z. twice — the same op twice, keyed ===" in text
    assert "  6 enqueued -> 6 calls, 0 collisions, 2.00s (floor 0.80s, 40%)" in text
    runs = [kept, collided, outcome("unsafe", collisions=9)]
    table = tables.distribution(runs, ARTICLE).splitlines()
    assert next(line for line in table if line.startswith("Z.")).endswith("broken in 1 of 2")
    assert table[-1].startswith("totals: 1 collisions under KEYS (B 0, C 0, D 0, Z 1)")
    assert any(line.startswith("Z. twice") for line in report.efficiency(runs).splitlines())
    assert tables.one_line([kept, collided]) == "Z 6/0  Z 6/1 BROKEN"


def test_a_fenced_call_reached_the_provider_but_counts_as_not_applied() -> None:
    """After a fault, the cut call and its rerun both reach the provider; the token refuses one."""
    rerun = outcome("keyed", calls=13, fenced=1)
    assert (rerun.applied, rerun.extra_calls, rerun.broken()) == (12, 0, [])
    assert "13 calls, 0 collisions, 1 fenced," in report.summary(rerun)
    assert outcome("keyed", calls=13).broken() == ["13 calls for 12 enqueued"]


NOISY = SCENARIOS["noisy"]


def test_e_sends_one_accounts_backlog_then_one_call_for_each_quiet_account() -> None:
    payloads = Shape(backlog=5).payloads(NOISY)
    assert [p["account_id"] for p in payloads[:5]] == [scenarios.HOT_ACCOUNT] * 5
    assert [p["op"] for p in payloads[:5]] == sorted(p["op"] for p in payloads[:5])
    quiet = payloads[5:]
    assert len(quiet) == scenarios.QUIET_ACCOUNTS == len({p["account_id"] for p in quiet})


def test_e_is_opt_in_and_its_floor_is_the_busy_accounts_chain() -> None:
    assert NOISY not in ARTICLE and NOISY.keyed
    assert Shape(backlog=20).floor(NOISY) == pytest.approx(20 * Shape().hold)
    # The bench times a sample of a long backlog: the floor is the sample's.
    assert Shape(backlog=10_000, sample=50, hold=0.1).floor(NOISY) == pytest.approx(5.0)
    # The article's run names its own keyed scenarios in the totals, not E.
    totals = tables.distribution([outcome("keyed")], ARTICLE).splitlines()[-1]
    assert "(B 0, C 0, D 0)" in totals


def test_e_reports_what_the_quiet_accounts_waited_and_how_the_busy_one_ran() -> None:
    lanes = noisy.Figures(
        quiet_waits=[0.1, 0.2, 0.4],
        hot_calls=20,
        hot_floor=0.9,
        hot_out_of_place=0,
        writes=3.0,
        reroutes=0.0,
    )
    assert lanes.lines() == [
        "  quiet accounts: 0.20s median, 0.40s longest, from enqueue to their call",
        "  hot account: 20 calls at 90% of its floor, in enqueue order",
        "  status writes per finished call: 3.0 (0.0 of them REROUTED)",
    ]
    shuffled = noisy.Figures([0.1], 20, 0.5, 17, 27.1, 12.0).lines()
    assert "17 of them out of enqueue order" in shuffled[1]


def test_a_keys_collision_with_several_workers_points_to_the_claim(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    three = Shape(workers=3)
    monkeypatch.setenv("DEMO_ATOMIC_CLAIM", "0")
    broke = outcome("keyed", shape=three, collisions=1)
    assert "3 workers without the atomic claim" in report.summary(broke)
    text, code = report.verdict([outcome("unsafe", shape=three, collisions=9), broke], [])
    assert code == 1 and text.splitlines()[-1].startswith("3 workers without the atomic claim")
    assert "DEMO_ATOMIC_CLAIM=1 in every terminal" in text
    # One worker: a collision there has another cause, and A's collisions are its point.
    assert report.keys_hint(outcome("keyed", collisions=1)) is None
    assert report.keys_hint(outcome("unsafe", shape=three, collisions=9)) is None
    monkeypatch.setenv("DEMO_ATOMIC_CLAIM", "1")
    assert "in every worker's too?" in report.summary(broke)


def test_a_long_summary_says_all_accounts_when_none_is_worth_a_look() -> None:
    names = scenarios.account_names(30)
    fine = {
        n: {"calls": 4, "collisions": 0, "in_flight": 0, "fenced": 0, "replayed": 0, "conflicts": 0}
        for n in names
    }
    shape = Shape(accounts=30)
    text = report.summary(
        outcome("keyed", shape=shape, enqueued=120, invocations=120, calls=120, per_account=fine)
    )
    assert "  OK all 30 accounts: calls=4, collisions=0" in text
    fine[names[7]] = {
        "calls": 4,
        "collisions": 1,
        "in_flight": 0,
        "fenced": 0,
        "replayed": 0,
        "conflicts": 0,
    }
    text = report.summary(
        outcome("keyed", shape=shape, enqueued=120, invocations=120, calls=120, per_account=fine)
    )
    assert "  OK 29 more accounts: calls=4, collisions=0" in text


def test_f_g_and_h_are_opt_in_and_judged_by_their_quota() -> None:
    slots, rate, tiers = SCENARIOS["slots"], SCENARIOS["rate"], SCENARIOS["tiers"]
    assert {slots, rate, tiers}.isdisjoint(ARTICLE)
    assert [slots, rate, tiers] == [s for s in SCENARIOS.values() if s.limited]
    assert (slots.slots, slots.rate, rate.slots, rate.rate, rate.per) == (2, None, 2, 5, 1.0)
    assert len(DEFAULT.payloads(slots)) == 24  # 3 accounts x 8 ops
    # H: the rule's tiers, given to the provider account by account; 6 accounts x 6 calls
    assert tiers.quota == {"accounts": {"gold1": 3, "gold2": 3}}
    assert len(DEFAULT.payloads(tiers)) == 36
    # With 3 workers' threads, the plain accounts' six calls in a row are the longest chain.
    assert Shape(workers=3).floor(tiers) == pytest.approx(6 * DEFAULT.hold)


def once_a_minute(account_id: str) -> str:
    """A task's function for the quota test below (pynenc wants it at module level)."""
    return account_id


def test_a_rate_of_one_call_is_the_providers_quota_too() -> None:
    """A task declaring one call per 60 s per account gives the provider that rate. Checked by
    mutation: with the quota filtering out every value of 1, as it did, the provider was given
    no rate at all for it."""
    app = PynencBuilder().app_id(f"quota_{uuid.uuid4().hex[:8]}").build()
    keyed = app.task(running_concurrency=Mode.KEYS, key_arguments=("account_id",))(once_a_minute)
    scenario = Scenario("Q", "quota", "one call a minute", keyclaim.limit(rate=1, per=60.0)(keyed))
    assert scenario.quota == {"rate": 1, "per": 60.0}
    assert SCENARIOS["keyed"].quota == {} and SCENARIOS["rate"].quota["rate"] == tasks.RATE
