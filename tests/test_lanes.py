"""The terminal lane chart: overlaps stack, serial calls share a row, and it stays readable."""

import pytest

from demo import lanes

pytestmark = pytest.mark.unit  # no process, no network


def call(account: str, start: float, end: float, collided: bool = False) -> dict:
    return {"account_id": account, "op": "op", "start": start, "end": end, "collided": collided}


def rows_of(chart: str, account: str) -> list[str]:
    """The chart rows that belong to one account: its named row and the stacked ones below."""
    lines = chart.splitlines()
    first = next(i for i, line in enumerate(lines) if line.strip().startswith(account + " "))
    rows = [lines[first]]
    for line in lines[first + 1 :]:
        if (
            not line.strip().startswith("|")
            or line.count("|") < 2
            or not line.rstrip().endswith("|")
        ):
            break
        rows.append(line)
    return rows


def test_overlapping_calls_for_one_account_stack_and_show_the_collision() -> None:
    chart = lanes.render(
        [call("acme", 0.0, 0.4), call("acme", 0.05, 0.45, collided=True)], colour=False, width=40
    )
    acme = rows_of(chart, "acme")
    assert len(acme) == 2
    assert "=" in acme[0] and "X" not in acme[0]
    assert "X" in acme[1]


def test_serial_calls_share_one_row_per_account() -> None:
    calls = [call(a, i * 0.4, i * 0.4 + 0.39) for i in range(4) for a in ("acme", "globex")]
    chart = lanes.render(calls, colour=False, width=64)
    for account in ("acme", "globex"):
        rows = rows_of(chart, account)
        assert len(rows) == 1
        assert rows[0].count("[") == 4  # four bars, one lane
    assert "X" not in chart.split("0s")[0]


def test_the_time_axis_spans_the_calls() -> None:
    chart = lanes.render([call("acme", 0.0, 1.6)], colour=False, width=64)
    axis = chart.splitlines()[-2]
    ruler = chart.splitlines()[-3]
    assert set(ruler.strip()) == {"+", "-"}
    assert axis.split()[0] == "0s"
    assert axis.split()[-1] == "1.6s"


def test_no_colour_means_no_escape_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    assert "\033[" not in lanes.render([call("acme", 0, 0.4), call("acme", 0.1, 0.5, True)])
    assert "\033[" in lanes.render([call("acme", 0, 0.4)], colour=True)


def test_output_that_is_not_a_terminal_is_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    # pytest captures stdout, so it is not a terminal here.
    assert not lanes.use_colour()


def test_dozens_of_accounts_are_summarised_not_drawn() -> None:
    calls = [call(f"acct{i:03d}", 0.0, 0.1) for i in range(40)]
    calls.append(call("acct039", 0.05, 0.12, collided=True))
    chart = lanes.render(calls, colour=False, width=40)
    drawn = [line for line in chart.splitlines() if line.strip().startswith("acct")]
    assert len(drawn) == lanes.MAX_ACCOUNTS_DRAWN
    assert "... 28 more accounts, 29 calls; most calls in flight at once on one of them: 2" in chart
    assert max(len(line) for line in chart.splitlines()) <= 100


def test_a_long_run_still_gets_an_axis() -> None:
    chart = lanes.render([call("acme", 0.0, 3600.0)], colour=False, width=40)
    assert chart.splitlines()[-2].split()[0] == "0s"


def test_no_calls_is_said_plainly() -> None:
    assert lanes.render([]) == "  (the provider saw no calls)"


def test_a_fenced_call_is_drawn_as_fenced_and_the_legend_says_so() -> None:
    stale = call("acme", 0.0, 0.4) | {"fenced": True}
    chart = lanes.render([stale, call("acme", 0.2, 0.6)], colour=False, width=40)
    acme = rows_of(chart, "acme")
    assert "~" in acme[0] and "X" not in "".join(acme)
    assert "fenced (refused by its token)" in chart
    assert "fenced" not in lanes.render([call("acme", 0.0, 0.4)], colour=False, width=40)


def test_a_replayed_call_or_a_409_draws_no_bar() -> None:
    """Both were answered at once and applied nowhere: only the call the provider held shows.
    Checked by mutation: drawing every finished call, the 409 stacked a second row."""
    replayed = call("acme", 0.5, 0.5) | {"replayed": True, "conflict": False}
    refused = call("acme", 0.2, 0.2) | {"replayed": False, "conflict": True}
    chart = lanes.render([call("acme", 0.0, 0.4), replayed, refused], colour=False, width=40)
    assert len(rows_of(chart, "acme")) == 1
    assert rows_of(chart, "acme")[0].count("[") == 1
