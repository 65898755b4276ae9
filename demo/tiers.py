"""H: accounts of two tiers, each its rule's slots, and an operator who changes two mid-run.

Two gold accounts at 3 calls in flight and four plain ones at 1 (tasks.py's rule, and the
provider's quota for each), gold1's calls enqueued last; once gold1 has three in flight,
the operator raises one plain account to 2 and lowers gold1 to 1, in the claim
(keyclaim.overrides) and at the provider (/quota), in the order that never lets a legal call
look like a collision: raised, the provider first (it allows what the claim is about to
start); lowered, the claim first, and the provider once the key holds no more calls than its
new limit (a call the claim admitted under the old limit is never judged against the new one).
"""

import threading
import time
from collections.abc import Callable
from typing import Any

GOLD, PLAIN = ("gold1", "gold2"), ("plain1", "plain2", "plain3", "plain4")
CALLS_PER_ACCOUNT = 6
LOWERED = "gold1"
CHANGES = {"plain1": 2, LOWERED: 1}  # the operator's, mid-run: one raised, one lowered
POLL_SECONDS, DEADLINE_SECONDS = 0.01, 30.0


def tier_calls(shape: Any) -> list[dict[str, str]]:
    """Every account's calls, account by account, the one lowered last: it still has calls
    waiting when the operator comes, however slow the enqueueing."""
    ops = [f"op{n}" for n in range(CALLS_PER_ACCOUNT)]
    return [{"account_id": a, "op": op} for a in (*PLAIN, *reversed(GOLD)) for op in ops]


def starting(rule: Callable[[str], int]) -> dict[str, int]:
    """The provider's quota for each account its rule gives more than one."""
    return {a: rule(a) for a in (*GOLD, *PLAIN) if rule(a) != 1}


class Operator(threading.Thread):
    """The operator, once the account it lowers has every slot its rule gives it in flight."""

    def __init__(self, provider: Any, task: Any, rule: Callable[[str], int]) -> None:
        super().__init__(daemon=True)
        self.provider, self.task, self.rule, self.failed = provider, task, rule, ""
        from keyclaim import overrides  # here: the provider imports this module without pynenc

        self.overrides = overrides

    def run(self) -> None:
        try:
            full = self.rule(LOWERED)
            self._until(lambda: self._in_flight(LOWERED) >= full, f"{LOWERED} at its limit")
            for account, slots in CHANGES.items():
                key = {"account_id": account}
                if slots > self.rule(account):  # raised: the provider first
                    self.provider.request("POST", f"/quota/{account}", slots=slots)
                    self.overrides.set_limit(self.task.app, self.task, key, slots=slots)
                else:  # lowered: the claim first, the provider once the key is down to it
                    self.overrides.set_limit(self.task.app, self.task, key, slots=slots)
                    self._until(lambda key=key, n=slots: self._held(key) <= n, f"{account} down")
                    self.provider.request("POST", f"/quota/{account}", slots=slots)
        except Exception as exc:  # said in the summary: the run goes on with its own limits
            self.failed = f"{type(exc).__name__}: {exc}"

    def _in_flight(self, account: str) -> int:
        return self.provider.report()["accounts"].get(account, {}).get("in_flight", 0)

    def _held(self, key: dict[str, str]) -> int:
        return self.overrides.held(self.task.app, self.task, key)

    @staticmethod
    def _until(condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + DEADLINE_SECONDS
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"gave up waiting for {what}")
            time.sleep(POLL_SECONDS)

    def clear(self) -> None:
        """The run's overrides cleared: the next run starts from the rule."""
        for account in CHANGES:
            self.overrides.clear_limit(self.task.app, self.task, {"account_id": account})


class TierFigures:
    """Each account's limits over time, and the most calls the provider had in flight under
    each: never above it, with 0 collisions."""

    def __init__(self, report: dict, rule: Callable[[str], int], failed: str) -> None:
        self.report, self.rule, self.failed = report, rule, failed

    def lines(self) -> list[str]:
        lines = ["  each account's limit over time, and its peak in flight (the provider's):"]
        for account, counts in sorted(self.report["accounts"].items()):
            limits = self.report["limits"].get(account) or [
                {"since": 0.0, "slots": self.rule(account), "peak": counts["peak_in_flight"]}
            ]
            shown = "; ".join(
                f"{q['slots']} from {q['since']:.2f}s: peak {q['peak']}" for q in limits
            )
            above = any(q["peak"] > q["slots"] for q in limits)
            lines.append(f"    {account:<8} {shown}" + ("  ABOVE ITS LIMIT" if above else ""))
        if self.failed:
            lines.append(f"  the operator gave up: {self.failed}")
        return lines
