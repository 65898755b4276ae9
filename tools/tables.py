"""The tables the tools print, as text: the rounds' and the bench's.

The rounds' distribution and one line per round (tools.stress); the bench's comparisons,
runner against runner and side against side (tools.bench).

Every function returns text and prints nothing.
"""

import math
import statistics
from collections import Counter

from demo.outcome import Outcome
from demo.scenarios import Scenario, Shape

COLUMNS = ("calls", "collisions", "extra_calls", "dropped", "deduped", "late", "unfinished")


def one_line(outcomes: list[Outcome]) -> str:
    """One round in a line: letter, calls/collisions, and anything unusual."""
    parts = []
    for o in outcomes:
        text = f"{o.scenario.letter} {o.calls}/{o.collisions}"
        if o.fenced:
            text += f" fenced={o.fenced}"
        if o.scenario.limited:
            text += f" throttled={o.throttled} peak={o.peak_in_flight}"
        if o.replayed or o.conflicts:
            text += f" replayed={o.replayed} 409={o.conflicts}"
        if o.late:
            text += f" late={len(o.late)}"
        if o.unfinished:
            text += f" unfinished={len(o.unfinished)}"
        parts.append(text + ("" if not o.broken() else " BROKEN"))
    return "  ".join(parts)


def _scenarios(outcomes: list[Outcome]) -> list[Scenario]:
    """The scenarios these outcomes ran, in the order they first ran."""
    return list(dict.fromkeys(o.scenario for o in outcomes))


def distribution(outcomes: list[Outcome], chosen: list[Scenario]) -> str:
    """Per scenario and measure: min / typical (median) / max over the rounds; the totals name
    every keyed scenario chosen, run or not."""
    rounds = max(Counter(o.scenario for o in outcomes).values())
    limited = any(o.scenario.limited for o in outcomes)  # F, G: their quota's own columns
    columns = (*COLUMNS, "throttled", "peak_in_flight") if limited else COLUMNS
    rows = []
    for scenario in _scenarios(outcomes):
        mine = [o for o in outcomes if o.scenario is scenario]
        cells = []
        for column in columns:
            found = [getattr(o, column) for o in mine]  # a list (late) or dict counts its items
            values = [len(v) if isinstance(v, list | dict) else v for v in found]
            cells.append(f"{min(values)}/{statistics.median_low(values)}/{max(values)}")
        broken = sum(1 for o in mine if o.broken())
        note = f"  broken in {broken} of {len(mine)}" if broken else ""
        rows.append((f"{scenario.letter}. {scenario.key:<7}", cells, note))
    # Each column as wide as its widest cell (2,000 calls make "2000/2000/2000"), 2 apart.
    names = [c.replace("_calls", "").replace("_in_flight", "") for c in columns]
    widths = [max(14, *(2 + len(cells[i]) for _, cells, _ in rows)) for i in range(len(names))]
    header = f"{'scenario':<10}" + "".join(f"{n:>{w}}" for n, w in zip(names, widths, strict=True))
    lines = ["", f"=== {rounds} rounds: min / typical / max ===", header]
    for label, cells, note in rows:
        lines.append(
            label + "".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)) + note
        )
    keyed = [o for o in outcomes if o.scenario.keyed]
    # Every keyed scenario chosen, even one that did not run, and any other that did.
    named = dict.fromkeys([*(s for s in chosen if s.keyed), *_scenarios(keyed)])
    by_letter = ", ".join(
        f"{s.letter} {sum(o.collisions for o in keyed if o.scenario is s)}" for s in named
    )
    lines.append(
        f"totals: {sum(o.collisions for o in keyed)} collisions under KEYS ({by_letter}), "
        f"{sum(o.extra_calls for o in outcomes)} extra calls, "
        f"{sum(len(o.late) for o in outcomes)} late, "
        f"{sum(len(o.unfinished) for o in outcomes)} never finished"
        + (f", {fenced} fenced" if (fenced := sum(o.fenced for o in outcomes)) else "")
        + (f", {sum(o.throttled for o in outcomes)} throttled" if limited else "")
    )
    return "\n".join(lines)


def compare(by_runner: dict[str, list[Outcome]]) -> str:
    """Median elapsed and efficiency per scenario and shape, runner against runner."""
    names = list(by_runner)
    first, last = names[0], names[-1]

    def medians(outcomes: list[Outcome]) -> dict[tuple[Scenario, Shape], tuple[float, float]]:
        grouped: dict[tuple[Scenario, Shape], list[Outcome]] = {}
        for o in outcomes:
            grouped.setdefault((o.scenario, o.shape), []).append(o)
        return {
            key: (statistics.median(o.elapsed for o in group), group[0].floor)
            for key, group in grouped.items()
        }

    table = {name: medians(outcomes) for name, outcomes in by_runner.items()}
    header = f"{'scenario':<22}" + "".join(f"{n:>16}" for n in names) + f"{last + '/' + first:>16}"
    lines = ["", f"=== {' vs '.join(names)}: median elapsed (efficiency) ===", header]
    for key in table[first]:
        scenario, shape = key
        label = f"{scenario.letter}. {scenario.key}"
        if (shape.accounts, shape.ops, shape.hold) != (Shape.accounts, Shape.ops, Shape.hold):
            label += f", {shape.accounts}x{shape.ops}"  # not the article's size
        cells = []
        for name in names:
            median, floor = table[name].get(key, (math.nan, math.nan))
            cells.append(f"{median:.2f}s ({floor / median:.0%})")
        ratio = table[last][key][0] / table[first][key][0] if key in table[last] else math.nan
        lines.append(f"{label:<22}" + "".join(f"{c:>16}" for c in cells) + f"{ratio:>16.2f}")
    return "\n".join(lines)


def compare_lines(sides: dict[str, dict[str, object]]) -> str:
    """The comparison's sides, figure against figure."""

    def elapsed(side: dict[str, object], key: str) -> str:
        if key not in side:
            return "-"
        median, floor = side[key]  # type: ignore[misc]
        return f"{median:.2f}s ({floor / median:.0%})"

    def seconds(value: object) -> str:
        return "did not start" if value is None else f"{value:.2f}s"

    named = {"B": "B. keyed", "B scaled": "B. keyed, scaled", "F": "F. slots", "G": "G. rate"}
    rows = [(name, *(elapsed(side, key) for side in sides.values())) for key, name in named.items()]
    last = list(sides.values())[-1]
    for key in [k for k in last if k.startswith("E ")]:
        runs = [side.get(key, {}) for side in sides.values()]
        assert all(isinstance(x, dict) for x in runs)
        name = f"E, {int(key.split()[1]):,} backlog:"
        rows += [
            (f"{name} quiet wait, longest", *(seconds(x.get("quiet_longest")) for x in runs)),
            (f"{name} busy account vs floor", *(f"{x.get('hot_floor', 0):.0%}" for x in runs)),
            (f"{name} in enqueue order", *("yes" if x.get("in_order") else "no" for x in runs)),
            (f"{name} status writes per call", *(f"{x.get('writes', 0):.1f}" for x in runs)),
            (f"{name} REROUTED per call", *(f"{x.get('reroutes', 0):.1f}" for x in runs)),
        ]
    if any("ceiling" in side for side in sides.values()):  # tools.bench_lines.ceiling
        bare = [side.get("ceiling") for side in sides.values()]
        bare = ["-" if x is None else f"{x:.0%}" for x in bare]
        rows.append(("E's ceiling here: one client, no queue", *bare))
    head = f"{'':<40}" + "".join(f"{name:>17}" for name in sides)
    title = (
        "=== stock pynenc vs the claim (account lines) on pynenc's SQLite connections vs the "
        "claim on kept ones, wake runner ==="
    )
    body = [f"{row[0]:<40}" + "".join(f"{cell:>17}" for cell in row[1:]) for row in rows]
    return "\n".join(["", title, head, *body])
