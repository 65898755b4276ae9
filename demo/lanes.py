"""A per-account lane chart of the provider's calls, drawn in the terminal.

One row per account, time left to right, one bar per call. Calls that overlap on one
account stack into extra rows, so a collision is visible as a second bar above the first.
"""

import io
import itertools
import shutil
from collections import defaultdict
from collections.abc import Sequence

from rich.console import Console
from rich.text import Text

OK_BAR, COLLISION_BAR, FENCED_BAR = "=", "X", "~"
STYLE = {OK_BAR: "green", COLLISION_BAR: "red", FENCED_BAR: "yellow"}
MAX_ACCOUNTS_DRAWN = 12


def use_colour() -> bool:
    """rich decides: colour on a terminal that shows it, never under NO_COLOR or in a pipe."""
    return Console().color_system is not None


def _stack(calls: list[dict]) -> list[list[dict]]:
    """Put each call in the first row where it overlaps nothing: overlap makes rows."""
    rows: list[list[dict]] = []
    for call in sorted(calls, key=lambda c: c["start"]):
        for row in rows:
            if row[-1]["end"] <= call["start"]:
                row.append(call)
                break
        else:
            rows.append([call])
    return rows


def _row(calls: list[dict], span: float, width: int) -> Text:
    cells = [" "] * width
    styles: list[str | None] = [None] * width
    for call in calls:
        first = min(width - 1, int(call["start"] / span * width))
        last = max(first, min(width - 1, int(call["end"] / span * width) - 1))
        fill = FENCED_BAR if call.get("fenced") else COLLISION_BAR if call["collided"] else OK_BAR
        for i in range(first, last + 1):
            cells[i], styles[i] = fill, STYLE[fill]
        # Brackets keep back-to-back calls apart when a bar is wide enough to hold them.
        if last - first >= 2:
            cells[first], cells[last] = "[", "]"
    row = Text()
    for style, run in itertools.groupby(zip(cells, styles, strict=True), key=lambda c: c[1]):
        row.append("".join(cell for cell, _ in run), style=style)
    return row


def _axis(span: float, width: int, indent: int) -> str:
    steps = (0.1, 0.2, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)
    step = next((s for s in steps if span / s <= width / 8), span / 4)
    ticks = ["-"] * width
    labels = [" "] * (width + 8)
    t = 0.0
    while t <= span + 1e-9:
        col = min(width - 1, int(t / span * width))
        ticks[col] = "+"
        text = f"{t:g}s"
        labels[col : col + len(text)] = text
        t += step
    pad = " " * indent
    return f"{pad}{''.join(ticks)}\n{pad}{''.join(labels).rstrip()}"


def render(calls: Sequence[dict], colour: bool | None = None, width: int | None = None) -> str:
    """The chart as text; calls carry account_id, op, start, end (seconds) and collided."""
    finished = [c for c in calls if c.get("end") is not None]
    # A replayed call and a 409 were answered at once, applied nowhere: no bar.
    finished = [c for c in finished if not (c.get("replayed") or c.get("conflict"))]
    if not finished:
        return "  (the provider saw no calls)"
    colour = use_colour() if colour is None else colour
    by_account: dict[str, list[dict]] = defaultdict(list)
    for call in finished:
        by_account[call["account_id"]].append(call)
    label = max(8, *(len(a) for a in by_account))
    if width is None:
        width = min(72, shutil.get_terminal_size((100, 24)).columns - label - 6)
    width = max(20, width)
    span = max(c["end"] for c in finished) or 1.0

    lines: list[Text] = []
    shown = list(by_account.items())[:MAX_ACCOUNTS_DRAWN]
    for account, acc_calls in shown:
        for depth, row in enumerate(_stack(acc_calls)):
            name = account if depth == 0 else ""
            lines.append(Text.assemble(f"  {name:<{label}} |", _row(row, span, width), "|"))
    if hidden := list(by_account.values())[MAX_ACCOUNTS_DRAWN:]:
        busiest, count = max(len(_stack(c)) for c in hidden), sum(len(c) for c in hidden)
        more = f"  ... {len(hidden)} more accounts, {count} calls; "
        lines.append(Text(f"{more}most calls in flight at once on one of them: {busiest}"))
    lines.append(Text(_axis(span, width, indent=label + 3)))
    legend = f"  {OK_BAR * 3} call   {COLLISION_BAR * 3} collision   stacked rows = overlap"
    if any(c.get("fenced") for c in finished):
        legend += f"   {FENCED_BAR * 3} fenced (refused by its token)"
    lines.append(Text(legend, style="dim"))
    if not colour:
        return "\n".join(line.plain for line in lines)
    # rich writes the escape codes: into a string, at a width that never wraps a row.
    out = Console(file=io.StringIO(), force_terminal=True, color_system="standard", width=1000)
    for line in lines:
        out.print(line, highlight=False, soft_wrap=True)
    return out.file.getvalue().rstrip("\n")
