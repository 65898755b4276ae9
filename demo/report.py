"""What a run prints: a scenario's summary, the efficiency against the floor, the verdict.

Every function returns text and prints nothing (the rounds' tables are tools/stress.py's).
"""

import statistics
import time
from collections import Counter

from demo import settings
from demo.outcome import Outcome

# Up to this many accounts, a summary lists each; past it, the ones worth a look, at most
# LISTED_AT_MOST of them, and one line for the rest.
ACCOUNTS_LISTED = 12
LISTED_AT_MOST = 8
REGISTERED = "registered"  # pynenc's status of an invocation no runner has picked up


def summary(outcome: Outcome) -> str:
    """The article's summary of one scenario, with its floor, late calls and broken promises."""
    o = outcome
    parts = [f"{o.calls} calls"]
    if o.dropped:
        parts[0] += f" ({o.dropped} dropped)"
    if o.deduped:
        parts[0] += f" ({o.deduped} deduped)"
    parts.append(f"{o.collisions} collisions")
    if o.fenced:
        parts.append(f"{o.fenced} fenced")
    if o.scenario.limited:  # F, G: the provider's judgement of each account's quota
        parts.append(f"{o.throttled} throttled, peak {o.peak_in_flight} in flight")
    if o.replayed:
        parts.append(f"{o.replayed} replayed")
    if o.conflicts:
        parts.append(f"{o.conflicts} refused with 409")
    head = f"  {o.enqueued} enqueued -> {', '.join(parts)}, {o.elapsed:.2f}s"
    head += f" (floor {o.floor:.2f}s, {o.floor / o.elapsed:.0%})"
    lines = ["", f"=== {o.scenario.heading} ===", head, *_account_lines(o)]
    if o.late:
        lines.append(f"  note: {len(o.late)} late, ran after the first for its key:")
        lines += [f"    {why}" for why in o.late[:LISTED_AT_MOST]]
        if len(o.late) > LISTED_AT_MOST:
            lines.append(f"    ... and {len(o.late) - LISTED_AT_MOST} more")
    if o.figures:
        lines += o.figures.lines()
    if o.abandoned:
        lines.append(f"  ({o.abandoned} calls of the backlog left unrun: only a sample is timed)")
    lines += [f"  GUARANTEE BROKEN: {p}" for p in o.broken()]
    if hint := keys_hint(o):
        lines.append(f"  {hint}")
    if o.unfinished:
        lines.append(f"  {unfinished_hint(o.unfinished)}")
    return "\n".join(lines)


def keys_hint(o: Outcome) -> str | None:
    """Why KEYS let two calls of one account in with several workers, and what fixes it."""
    if not (o.scenario.keyed and o.collisions and o.shape.workers > 1):
        return None
    if settings.get("DEMO_ATOMIC_CLAIM") == "1":
        return "the atomic claim is on here: is DEMO_ATOMIC_CLAIM=1 set in every worker's too?"
    return (
        f"{o.shape.workers} workers without the atomic claim: pynenc checks a key and claims it "
        "in two steps, so two workers can both start one account's call. Set "
        "DEMO_ATOMIC_CLAIM=1 in every terminal (sample.py: --atomic-claim); docs/scale-out.md"
    )


def _account_lines(outcome: Outcome) -> list[str]:
    """One line per account; past ACCOUNTS_LISTED, only those worth a look, then the rest."""
    limited = outcome.scenario.limited

    def line(name: str, acc: dict[str, int]) -> str:
        mark = " X" if acc["collisions"] or acc.get("throttled") else "OK"
        marks = (("fenced", "fenced"), ("replayed", "replayed"), ("conflicts", "409"))
        rest = "".join(f"  {label}={acc[count]}" for count, label in marks if acc.get(count))
        if limited:
            rest += f"  throttled={acc.get('throttled', 0)}  peak={acc.get('peak_in_flight', 0)}"
        return f"  {mark} {name:<8} calls={acc['calls']}  collisions={acc['collisions']}{rest}"

    accounts = outcome.per_account.items()
    if len(outcome.per_account) <= ACCOUNTS_LISTED:
        return [line(name, acc) for name, acc in accounts]
    # Worth a look: a collision, or another number of calls than the ideal run makes
    # (a late or extra call, a drop that did not happen, a call that never came).
    ideal = outcome.scenario.ideal_calls(outcome.shape)
    notable = [(n, a) for n, a in accounts if a["collisions"] or a["calls"] != ideal[n]]
    lines = [line(name, acc) for name, acc in notable[:LISTED_AT_MOST]]
    if len(notable) > LISTED_AT_MOST:
        lines.append(f"  ... and {len(notable) - LISTED_AT_MOST} more accounts like these")
    if rest := len(outcome.per_account) - len(notable):
        each = "/".join(str(n) for n in sorted(set(ideal.values())))
        who = f"{rest} more accounts" if notable else f"all {rest} accounts"
        lines.append(f"  OK {who}: calls={each}, collisions=0")
    return lines


def unfinished_hint(unfinished: dict[str, str]) -> str:
    """Why work is unfinished at the deadline, and what to do about it."""
    if all(status == REGISTERED for status in unfinished.values()):
        return (
            f"no runner picked the work up ({len(unfinished)} invocations still registered). "
            "Start one with: uv run pynenc --app tasks.app runner start"
        )
    shown = listed(Counter(unfinished.values()))
    return f"{len(unfinished)} invocations did not finish in time: {shown}"


def listed(counts: Counter[str]) -> str:
    """Statuses by count, the most common first: "3 running, 1 pending"."""
    return ", ".join(f"{n} {status}" for status, n in counts.most_common())


def efficiency(outcomes: list[Outcome]) -> str:
    """Per scenario: median elapsed against the physical floor."""
    lines = [f"{'scenario':<11}{'median':>9}{'floor':>9}{'efficiency':>12}{'runs':>6}"]
    for scenario in dict.fromkeys(o.scenario for o in outcomes):
        mine = [o for o in outcomes if o.scenario is scenario]
        median = statistics.median(o.elapsed for o in mine)
        floor = mine[0].floor
        lines.append(
            f"{scenario.letter}. {scenario.key:<8}{median:>8.2f}s{floor:>8.2f}s"
            f"{floor / median:>12.0%}{len(mine):>6}"
        )
    return "\n".join(lines)


def verdict(outcomes: list[Outcome], crashes: list[str]) -> tuple[str, int]:
    """The crashes, then one line: every guarantee held (exit code 0), or the first broke (1)."""
    broken = [(o.scenario.letter, p) for o in outcomes for p in o.broken()]
    broken += [("worker", crash) for crash in crashes]
    lines = []
    if crashes:
        lines += [f"\nworker crashes: {len(crashes)}", *(f"  {crash}" for crash in crashes)]
    if broken:
        letter, problem = broken[0]
        lines.append(f"\nFAILED: {len(broken)} broken guarantee(s); first: {letter}: {problem}")
        lines += [hint for o in outcomes if (hint := keys_hint(o))][:1]
        return "\n".join(lines), 1
    stamp = time.strftime("%H:%M:%S")
    lines.append(f"\nOK: every guarantee held ({len(outcomes)} scenario runs, {stamp}).")
    return "\n".join(lines), 0
