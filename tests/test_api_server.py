"""The provider is the demo's oracle: its counting must be right under truly concurrent calls."""

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

import api_server
from demo import ownership
from demo.processes import wait_until
from stand_in import rules
from stand_in.held import app as provider_app  # api_server's, with /pause and /resume

pytestmark = pytest.mark.unit  # no process, no network


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.setattr(ownership, "owner", None)  # no run owns the provider yet
    with TestClient(provider_app) as c:
        r = c.post("/reset", params={"label": "test", "hold": 0.05})
        assert r.status_code == 200, r.text
        yield c


async def _concurrent(calls: list[tuple[str, str]], hold: float | None = None) -> list[str]:
    transport = httpx.ASGITransport(app=provider_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://provider") as c:
        params = {"hold": hold} if hold is not None else None
        responses = await asyncio.gather(
            *(c.post(f"/call/{a}/{op}", params=params) for a, op in calls)
        )
    for r in responses:
        assert r.status_code == 200, r.text
    return [r.json()["outcome"] for r in responses]


def counts(**changed: int) -> dict[str, int]:
    """An account's counts in /report: every one 0 but those given."""
    zero = ("calls", "collisions", "in_flight", "fenced", "throttled", "peak_in_flight")
    return dict.fromkeys((*zero, "replayed", "conflicts"), 0) | changed


def test_concurrent_calls_for_one_account_collide(client: TestClient) -> None:
    outcomes = asyncio.run(_concurrent([("acme", f"op{i}") for i in range(5)], hold=0.2))
    assert sorted(outcomes) == ["collision"] * 4 + ["ok"]
    report = client.get("/report").json()
    assert report["accounts"]["acme"] == counts(calls=5, collisions=4, peak_in_flight=5)
    assert (report["calls"], report["collisions"]) == (5, 4)


def test_different_accounts_never_collide(client: TestClient) -> None:
    names = [f"acct{i}" for i in range(10)]
    outcomes = asyncio.run(_concurrent([(n, "fetch") for n in names], hold=0.1))
    assert outcomes == ["ok"] * 10
    assert client.get("/report").json()["collisions"] == 0


def test_sequential_calls_for_one_account_do_not_collide(client: TestClient) -> None:
    for op in ("a", "b", "c"):
        r = client.post(f"/call/acme/{op}", params={"hold": 0})
        assert r.json() == {"outcome": "ok"}, r.text
    assert client.get("/report").json()["accounts"]["acme"]["collisions"] == 0


def test_reset_clears_counts_and_sets_the_hold(client: TestClient) -> None:
    client.post("/call/acme/op", params={"hold": 0})
    r = client.post("/reset", params={"label": "B. keyed", "hold": 0.1})
    assert r.json() == {"label": "B. keyed", "hold": 0.1, "slots": 1, "rate": None, "per": 1.0}
    report = client.get("/report").json()
    assert (report["label"], report["hold"], report["calls"], report["accounts"]) == (
        "B. keyed",
        0.1,
        0,
        {},
    )


def test_timeline_records_each_call_with_start_end_and_collision(client: TestClient) -> None:
    asyncio.run(_concurrent([("acme", "first"), ("acme", "second")], hold=0.1))
    calls = client.get("/timeline").json()["calls"]
    assert [c["account_id"] for c in calls] == ["acme", "acme"]
    assert sorted(c["collided"] for c in calls) == [False, True]
    for c in calls:
        assert 0 <= c["start"] < c["end"]


def test_health_names_the_instance(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_API_INSTANCE", "abc123")
    assert client.get("/health").json() == {"status": "ok", "instance": "abc123"}


@pytest.mark.parametrize(
    "path, params",
    [
        ("/call/acme/op", {"hold": -1}),
        ("/call/acme/op", {"hold": 1e9}),
        ("/call/acme/op", {"hold": "soon"}),
        ("/call/acme/op", {"hold": "nan"}),
        ("/call/acme/" + "x" * 65, None),
        ("/call/" + "a" * 65 + "/op", None),
        ("/call/ac%0Ame/op", None),
        ("/call/ac%20me/op", None),
        ("/call/acme/op%07", None),
        ("/reset", {"hold": -0.1}),
    ],
)
def test_bad_input_is_rejected_with_422(
    client: TestClient, path: str, params: dict[str, object] | None
) -> None:
    r = client.post(path, params=params)
    assert r.status_code == 422, r.text
    assert r.json()["detail"], r.text
    assert client.get("/report").json()["calls"] == 0


@pytest.mark.parametrize("path", ["/call//op", "/call/acme/", "/call/acme", "/call/a/b/c"])
def test_an_empty_or_malformed_call_path_is_a_422_that_says_what_fits(
    client: TestClient, path: str
) -> None:
    r = client.post(path)
    assert r.status_code == 422, r.text
    assert "/call/{account_id}/{op}" in r.json()["detail"]
    assert client.get("/report").json()["calls"] == 0


def test_paused_calls_stay_in_flight_until_resumed(client: TestClient) -> None:
    async def scenario() -> tuple[int, list[str]]:
        transport = httpx.ASGITransport(app=provider_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://provider") as c:
            await c.post("/pause")
            first = asyncio.create_task(c.post("/call/acme/one", params={"hold": 0}))
            while (await c.get("/report")).json()["in_flight"] < 1:
                await asyncio.sleep(0.01)
            # Still paused: a second call for the account arrives while the first is held.
            second = asyncio.create_task(c.post("/call/acme/two", params={"hold": 0}))
            while (await c.get("/report")).json()["in_flight"] < 2:
                await asyncio.sleep(0.01)
            held = (await c.get("/report")).json()["in_flight"]
            await c.post("/resume")
            return held, [(await t).json()["outcome"] for t in (first, second)]

    held, outcomes = asyncio.run(asyncio.wait_for(scenario(), timeout=10))
    assert held == 2
    assert outcomes == ["ok", "collision"]
    assert client.get("/report").json()["in_flight"] == 0


def _fenced_pair(first_token: int | None, second_token: int | None) -> list[str]:
    """Two calls for one account, the second arriving while the first is in flight."""

    async def scenario() -> list[str]:
        transport = httpx.ASGITransport(app=provider_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://provider") as c:

            def params(token: int | None) -> dict[str, object]:
                return {"hold": 0.2} | ({} if token is None else {"token": token})

            first = asyncio.create_task(c.post("/call/acme/one", params=params(first_token)))
            while (await c.get("/report")).json()["in_flight"] < 1:
                await asyncio.sleep(0.01)
            second = await c.post("/call/acme/two", params=params(second_token))
            return [(await first).json()["outcome"], second.json()["outcome"]]

    return asyncio.run(asyncio.wait_for(scenario(), timeout=10))


def test_a_newer_token_fences_the_call_still_in_flight(client: TestClient) -> None:
    assert _fenced_pair(1, 2) == ["fenced", "ok"]
    report = client.get("/report").json()
    assert report["accounts"]["acme"] == counts(calls=2, fenced=1, peak_in_flight=1)
    calls = client.get("/timeline").json()["calls"]
    assert [(c["token"], c["fenced"], c["collided"]) for c in calls] == [
        (1, True, False),
        (2, False, False),
    ]


def test_a_late_call_with_an_older_token_is_refused_at_once(client: TestClient) -> None:
    assert _fenced_pair(2, 1) == ["ok", "fenced"]
    assert client.get("/report").json()["accounts"]["acme"]["fenced"] == 1
    assert client.post("/call/acme/three", params={"hold": 0, "token": 1}).json() == {
        "outcome": "fenced"
    }


@pytest.mark.parametrize("tokens", [(None, None), (1, None), (None, 1), (1, 1)])
def test_without_a_newer_token_an_overlap_is_still_a_collision(
    client: TestClient, tokens: tuple[int | None, int | None]
) -> None:
    assert _fenced_pair(*tokens) == ["ok", "collision"]
    report = client.get("/report").json()
    assert (report["collisions"], report["fenced"]) == (1, 0)


def test_pausing_one_account_holds_only_its_calls(client: TestClient) -> None:
    async def scenario() -> tuple[dict, list[str]]:
        transport = httpx.ASGITransport(app=provider_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://provider") as c:
            await c.post("/pause", params={"account_id": "acme"})
            held = asyncio.create_task(c.post("/call/acme/one", params={"hold": 0}))
            free = await c.post("/call/globex/one", params={"hold": 0})  # not held: it ends
            report = (await c.get("/report")).json()
            await c.post("/resume")
            return report, [free.json()["outcome"], (await held).json()["outcome"]]

    report, outcomes = asyncio.run(asyncio.wait_for(scenario(), timeout=10))
    assert report["accounts"]["acme"]["in_flight"] == 1
    assert report["accounts"]["globex"]["in_flight"] == 0
    assert outcomes == ["ok", "ok"]


def test_a_plain_provider_serves_no_pause(client: TestClient) -> None:
    """`uvicorn api_server:app`, the article's provider, serves neither /pause nor /resume: only
    the app the tests and the fault harness start (stand_in.held) does. Checked by mutation:
    with the pause router included in api_server's app, /pause answered 200 and this failed."""
    assert client.post("/pause").json() == {"paused": True}  # the held app's
    assert client.post("/resume").json() == {"paused": False}
    with TestClient(api_server.app) as plain:
        assert [plain.post(path).status_code for path in ("/pause", "/resume")] == [404, 404]
        assert plain.post("/call/acme/op", params={"hold": 0}).json() == {"outcome": "ok"}
    assert rules.paused == set()


def begin(client: TestClient, label: str, lease: float = 60.0) -> httpx.Response:
    return client.post("/runs", params={"label": label, "lease": lease})


def test_one_run_at_a_time_and_a_run_that_died_lets_go_after_its_lease(client: TestClient) -> None:
    """A second run (another enqueue.py) is refused, naming the first, and so is any reset but
    the owner's; the owner dies without ending its run, and the provider frees itself."""
    run = begin(client, "enqueue.py all", lease=0.3).json()["run"]
    refused = begin(client, "enqueue.py keyed")
    assert refused.status_code == 409
    assert "another run uses this provider: 'enqueue.py all', started at" in refused.text
    assert client.post("/reset", params={"label": "other"}).status_code == 409
    assert client.post("/reset", params={"label": "mine", "run": run}).status_code == 200
    assert client.get("/report").json()["label"] == "mine"
    wait_until(lambda: begin(client, "later").status_code == 200, 10, "the lease to run out")


def test_a_run_that_ends_frees_the_provider_at_once(client: TestClient) -> None:
    run = begin(client, "enqueue.py all").json()["run"]
    assert client.delete(f"/runs/{run}").json() == {"ended": True}
    assert client.post("/reset", params={"label": "anyone"}).status_code == 200
    assert begin(client, "the next run").status_code == 200


def _in_flight_calls(calls: list[dict[str, object]]) -> list[str]:
    """Each call starts while the earlier ones are still held (the provider paused); then all
    are let go. Their outcomes, in order."""

    async def scenario() -> list[str]:
        transport = httpx.ASGITransport(app=provider_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://provider") as c:
            await c.post("/pause")
            tasks = []
            for n, params in enumerate(calls, 1):
                path = f"/call/acme/op{n}"
                tasks.append(asyncio.create_task(c.post(path, params={"hold": 0} | params)))
                while len((await c.get("/timeline")).json()["calls"]) < n:
                    await asyncio.sleep(0.01)
            await c.post("/resume")
            return [(await t).json()["outcome"] for t in tasks]

    return asyncio.run(asyncio.wait_for(scenario(), timeout=10))


def test_with_two_slots_a_third_call_in_flight_is_the_collision(client: TestClient) -> None:
    client.post("/reset", params={"label": "F", "hold": 0, "slots": 2})
    assert _in_flight_calls([{}, {}, {}]) == ["ok", "ok", "collision"]
    acme = client.get("/report").json()["accounts"]["acme"]
    assert (acme["collisions"], acme["peak_in_flight"]) == (1, 3)


def test_a_token_fences_only_older_calls_of_its_own_slot(client: TestClient) -> None:
    """Slot 1's newer token leaves slot 0's call in flight applied; slot 0's newer token fences
    slot 0's older call. Checked by mutation: with tokens compared across slots (one newest
    token per account), slot 1's claim fenced slot 0's call and this test failed."""
    client.post("/reset", params={"label": "F", "hold": 0, "slots": 2})
    assert _in_flight_calls([{"token": 10, "slot": 0}, {"token": 20, "slot": 1}]) == ["ok", "ok"]
    assert _in_flight_calls([{"token": 11, "slot": 0}, {"token": 12, "slot": 0}]) == [
        "fenced",
        "ok",
    ]
    acme = client.get("/report").json()["accounts"]["acme"]
    assert (acme["fenced"], acme["collisions"], acme["peak_in_flight"]) == (1, 0, 2)
    # A late call with slot 1's older token is refused at once, and counts against no quota.
    late = client.post("/call/acme/late", params={"hold": 0, "token": 19, "slot": 1})
    assert late.json() == {"outcome": "fenced"}


def test_a_call_beyond_the_rate_is_throttled_and_not_applied(client: TestClient) -> None:
    client.post("/reset", params={"label": "G", "hold": 0, "slots": 9, "rate": 3, "per": 60})
    outcomes = [client.post(f"/call/acme/op{n}", params={"hold": 0}).json() for n in range(5)]
    assert [o["outcome"] for o in outcomes] == ["ok", "ok", "ok", "throttled", "throttled"]
    report = client.get("/report").json()
    assert (report["throttled"], report["collisions"], report["quota"]["rate"]) == (2, 0, 3)
    # Another account has a window of its own.
    assert client.post("/call/globex/op", params={"hold": 0}).json()["outcome"] == "ok"


def test_the_rate_window_slides_on_the_providers_clock(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At most `rate` calls in any `per` seconds: the fourth is refused until the first call's
    start is more than `per` ago."""
    now = [1000.0]
    monkeypatch.setattr(rules.time, "monotonic", lambda: now[0])
    client.post("/reset", params={"label": "G", "hold": 0, "rate": 3, "per": 1.0, "slots": 9})
    answers = []
    for at in (0.0, 0.1, 0.2, 0.9, 1.0, 1.05, 1.15):
        now[0] = 1000.0 + at
        answers.append(client.post("/call/acme/op", params={"hold": 0}).json()["outcome"])
    assert answers == ["ok", "ok", "ok", "throttled", "ok", "throttled", "ok"]


# --- Idempotency-Key: the IETF httpapi draft's semantics ----------------------------------


def keyed_call(
    client: TestClient, key: str, account_id: str = "acme", op: str = "charge", **params: object
) -> httpx.Response:
    return client.post(
        f"/call/{account_id}/{op}", params={"hold": 0} | params, headers={"Idempotency-Key": key}
    )


def fates(client: TestClient) -> list[tuple[str, str | None, bool, bool, bool]]:
    """Each call's op, key and marks (fenced, replayed, conflict), from the timeline."""
    return [
        (c["op"], c["key"], c["fenced"], c["replayed"], c["conflict"])
        for c in client.get("/timeline").json()["calls"]
    ]


def test_the_same_key_twice_is_applied_once_and_replayed_once_with_the_same_outcome(
    client: TestClient,
) -> None:
    first, repeat = keyed_call(client, "inv-1"), keyed_call(client, "inv-1")
    assert first.status_code == repeat.status_code == 200, (first.text, repeat.text)
    assert first.json() == repeat.json() == {"outcome": "ok"}
    report = client.get("/report").json()
    assert report["accounts"]["acme"] == counts(calls=2, peak_in_flight=1, replayed=1)
    assert (report["replayed"], report["conflicts"]) == (1, 0)
    assert fates(client) == [
        ("charge", "inv-1", False, False, False),
        ("charge", "inv-1", False, True, False),
    ]


def test_a_replay_returns_the_stored_outcome_even_a_collision(client: TestClient) -> None:
    """The store keeps what the first call answered, whatever it was."""

    async def scenario() -> list[str]:
        transport = httpx.ASGITransport(app=provider_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://provider") as c:
            first = asyncio.create_task(c.post("/call/acme/one", params={"hold": 0.2}))
            while (await c.get("/report")).json()["in_flight"] < 1:
                await asyncio.sleep(0.01)
            second = await c.post(
                "/call/acme/two", params={"hold": 0}, headers={"Idempotency-Key": "k2"}
            )
            await first
            again = await c.post(
                "/call/acme/two", params={"hold": 0}, headers={"Idempotency-Key": "k2"}
            )
            return [second.json()["outcome"], again.json()["outcome"]]

    assert asyncio.run(asyncio.wait_for(scenario(), timeout=10)) == ["collision", "collision"]
    report = client.get("/report").json()
    assert (report["calls"], report["collisions"], report["replayed"]) == (3, 1, 1)


def _while_in_flight(first: dict[str, object], second: dict[str, object]) -> list[httpx.Response]:
    """Two calls for acme, the second arriving while the provider holds the first (paused)."""

    async def scenario() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=provider_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://provider") as c:

            async def report() -> dict:
                return (await c.get("/report")).json()

            before = (await report())["calls"]
            await c.post("/pause", params={"account_id": "acme"})
            try:
                held = asyncio.create_task(c.post("/call/acme/charge", **first))
                while (await report())["in_flight"] < 1:
                    await asyncio.sleep(0.01)
                answer = asyncio.create_task(c.post("/call/acme/charge", **second))
                while (await report())["calls"] < before + 2:
                    await asyncio.sleep(0.01)
            finally:
                await c.post("/resume")
            return [await held, await answer]

    return asyncio.run(asyncio.wait_for(scenario(), timeout=10))


def test_the_same_key_while_the_first_is_in_flight_gets_409_and_is_not_applied(
    client: TestClient,
) -> None:
    key = {"headers": {"Idempotency-Key": "inv-2"}, "params": {"hold": 0}}
    held, refused = _while_in_flight(key, key)
    assert refused.status_code == 409, refused.text
    assert "in flight" in refused.json()["detail"]
    assert held.json() == {"outcome": "ok"}  # the first: applied, and no collision
    report = client.get("/report").json()
    assert report["accounts"]["acme"] == counts(calls=2, peak_in_flight=1, conflicts=1)
    assert fates(client) == [
        ("charge", "inv-2", False, False, False),
        ("charge", "inv-2", False, False, True),
    ]
    # Once the first has ended, the key is answered from the store.
    assert keyed_call(client, "inv-2").json() == {"outcome": "ok"}
    assert client.get("/report").json()["replayed"] == 1


def test_the_same_key_for_another_op_or_account_gets_422_and_is_not_counted(
    client: TestClient,
) -> None:
    assert keyed_call(client, "inv-3").status_code == 200
    for account_id, op in (("acme", "refund"), ("globex", "charge")):
        r = keyed_call(client, "inv-3", account_id, op)
        assert r.status_code == 422, r.text
        assert "first sent with acme/charge" in r.json()["detail"], r.text
    report = client.get("/report").json()
    assert (report["calls"], report["replayed"], report["conflicts"]) == (1, 0, 0)


@pytest.mark.parametrize("key", ["", "a b", "é", "x" * 256])
def test_a_malformed_key_is_rejected_with_422(client: TestClient, key: str) -> None:
    r = client.post("/call/acme/op", params={"hold": 0}, headers={"Idempotency-Key": key.encode()})
    assert r.status_code == 422, r.text
    assert client.get("/report").json()["calls"] == 0


def test_without_a_key_every_call_is_applied_as_before(client: TestClient) -> None:
    """Two calls for the same account and op, no key: both applied, nothing replayed."""
    for _ in range(2):
        assert client.post("/call/acme/charge", params={"hold": 0}).json() == {"outcome": "ok"}
    assert _while_in_flight({"params": {"hold": 0}}, {"params": {"hold": 0}})[1].json() == {
        "outcome": "collision"
    }
    report = client.get("/report").json()
    assert (report["calls"], report["collisions"]) == (4, 1)
    assert (report["fenced"], report["replayed"], report["conflicts"]) == (0, 0, 0)
    assert {c["key"] for c in client.get("/timeline").json()["calls"]} == {None}


def test_a_reset_forgets_the_keys(client: TestClient) -> None:
    assert keyed_call(client, "inv-4").status_code == 200
    client.post("/reset", params={"label": "next", "hold": 0.05})
    assert keyed_call(client, "inv-4", "globex", "refund").json() == {"outcome": "ok"}
    assert keyed_call(client, "inv-4", "globex", "refund").json() == {"outcome": "ok"}
    report = client.get("/report").json()
    assert (report["calls"], report["replayed"]) == (2, 1)


def test_a_newer_claim_of_the_same_key_fences_the_call_in_flight_and_is_applied(
    client: TestClient,
) -> None:
    """Fencing and idempotency stay apart. The same invocation's call, recovered with a newer
    token while its cut call is still in flight, fences that call and is applied itself (the
    key passes to it), instead of a 409 behind a call that will not be applied. A late call
    with the oldest token is fenced, not replayed; the counts never mix. Checked by mutation:
    with the key judged before the token (a fenced holder still holding its key), the
    recovered call got 409 and this test failed."""
    held, recovered = _while_in_flight(
        {"headers": {"Idempotency-Key": "inv-5"}, "params": {"hold": 0, "token": 1}},
        {"headers": {"Idempotency-Key": "inv-5"}, "params": {"hold": 0, "token": 2}},
    )
    assert held.json() == {"outcome": "fenced"}
    assert recovered.json() == {"outcome": "ok"}
    late = keyed_call(client, "inv-5", token=1)
    assert late.json() == {"outcome": "fenced"}
    again = keyed_call(client, "inv-5", token=2)
    assert again.json() == {"outcome": "ok"}
    report = client.get("/report").json()
    assert report["accounts"]["acme"] == counts(calls=4, fenced=2, peak_in_flight=1, replayed=1)
    assert fates(client) == [
        ("charge", "inv-5", True, False, False),
        ("charge", "inv-5", False, False, False),
        ("charge", "inv-5", True, False, False),
        ("charge", "inv-5", False, True, False),
    ]


def test_a_key_whose_holder_was_fenced_and_ended_is_applied_by_its_next_call(
    client: TestClient,
) -> None:
    """Another invocation's newer token fences the key's call; once it has ended, the key's
    next call (the same invocation again, with a newer token still) is applied, not replayed.
    Checked by mutation: with the fenced call's outcome stored at its end, the next call was
    answered "fenced" from the store, never applied, and this test failed."""
    held, other = _while_in_flight(
        {"headers": {"Idempotency-Key": "inv-6"}, "params": {"hold": 0, "token": 1}},
        {"headers": {"Idempotency-Key": "inv-7"}, "params": {"hold": 0, "token": 2}},
    )
    assert (held.json(), other.json()) == ({"outcome": "fenced"}, {"outcome": "ok"})
    assert keyed_call(client, "inv-6", token=3).json() == {"outcome": "ok"}
    report = client.get("/report").json()
    assert (report["calls"], report["fenced"], report["replayed"]) == (3, 1, 0)


def test_a_replayed_call_spends_no_rate_and_a_throttled_one_holds_no_key(
    client: TestClient,
) -> None:
    """The provider judges the key before the rate: a repeat of an applied call is answered
    from the store even with the rate spent, and a call throttled before it was applied leaves
    its key free, so its next try is applied once the rate allows. Checked by mutation: with
    the rate judged before the key, the repeat was throttled (not replayed) and this test
    failed."""
    client.post("/reset", params={"label": "G", "hold": 0, "slots": 9, "rate": 1, "per": 60})
    assert keyed_call(client, "inv-1").json() == {"outcome": "ok"}
    assert keyed_call(client, "inv-1").json() == {"outcome": "ok"}  # replayed, rate spent
    assert keyed_call(client, "inv-2").json() == {"outcome": "throttled"}
    throttled = api_server.state.keys["inv-2"]
    assert (throttled.holder, throttled.outcome) == (None, None)
    report = client.get("/report").json()
    assert (report["calls"], report["replayed"], report["throttled"]) == (3, 1, 1)


def test_a_fenced_call_that_ends_after_its_keys_new_holder_leaves_the_stored_outcome(
    client: TestClient,
) -> None:
    """The cut call (token 1) is still held when the recovered one (token 2, the same key)
    arrives, fences it, is applied and ends; the cut call ends after it. Its end must not touch
    the key it no longer holds: a repeat is replayed, never applied again. The order is fixed
    by the holds (0.3 s against none), not by timing luck. Checked by mutation: without the
    `keyed.holder is record` guard, the cut call's end wiped the stored outcome, the repeat
    was applied a second time, and this test failed."""

    async def scenario() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=provider_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://provider") as c:
            headers = {"Idempotency-Key": "inv-8"}
            cut = asyncio.create_task(
                c.post("/call/acme/charge", params={"hold": 0.3, "token": 1}, headers=headers)
            )
            while (await c.get("/report")).json()["in_flight"] < 1:
                await asyncio.sleep(0.01)
            recovered = await c.post(
                "/call/acme/charge", params={"hold": 0, "token": 2}, headers=headers
            )
            return [recovered, await cut]

    recovered, cut = asyncio.run(asyncio.wait_for(scenario(), timeout=10))
    assert (recovered.json(), cut.json()) == ({"outcome": "ok"}, {"outcome": "fenced"})
    assert keyed_call(client, "inv-8", token=2).json() == {"outcome": "ok"}
    calls = client.get("/timeline").json()["calls"]
    assert [c["fenced"] or c["replayed"] for c in calls] == [True, False, True]
    assert client.get("/report").json()["replayed"] == 1


def test_an_accounts_quota_changed_mid_run_judges_each_later_call(client: TestClient) -> None:
    """Three slots, two calls in flight; lowered to one, a third call collides; raised to
    four, a fourth does not; each quota's peak is kept beside it. Checked by mutation: with
    Books.judge reading the reset's quota (not the account's), the third call was "ok"."""
    client.post("/reset", params={"label": "H", "hold": 0, "slots": 3})

    async def scenario() -> list[str]:
        transport = httpx.ASGITransport(app=provider_app)
        async with httpx.AsyncClient(transport=transport, base_url="http://provider") as c:
            await c.post("/pause")
            tasks = []
            for n, slots in enumerate((None, None, 1, 4), 1):
                if slots is not None:
                    await c.post("/quota/acme", params={"slots": slots})
                tasks.append(asyncio.create_task(c.post(f"/call/acme/op{n}", params={"hold": 0})))
                while len((await c.get("/timeline")).json()["calls"]) < n:
                    await asyncio.sleep(0.01)
            await c.post("/resume")
            return [(await t).json()["outcome"] for t in tasks]

    outcomes = asyncio.run(asyncio.wait_for(scenario(), timeout=10))
    assert outcomes == ["ok", "ok", "collision", "ok"]
    limits = client.get("/report").json()["limits"]["acme"]
    assert [(q["slots"], q["peak"]) for q in limits] == [(3, 2), (1, 3), (4, 4)]
