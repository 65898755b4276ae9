"""One line that shows a scenario's progress while it runs, on a terminal only.

It updates in place and vanishes when the scenario ends, where its summary takes over. Pipes,
CI logs, NO_COLOR and TERM=dumb get nothing of it: rich's Console knows what it writes to.
"""

import contextlib
import os
import time
from collections.abc import Callable, Iterator

from rich.console import Console

from demo.provider import Provider, ProviderUnreachable

# The provider is asked for its counts at most this often; the status poll is faster.
REPORT_EVERY_SECONDS = 0.25


@contextlib.contextmanager
def line(label: str, provider: Provider) -> Iterator[Callable[[int, int], None] | None]:
    """Yield a callback for (finished, total), or None where no progress is shown."""
    console = Console()
    if not console.is_terminal or console.is_dumb_terminal or "NO_COLOR" in os.environ:
        yield None
        return
    started = time.monotonic()
    counts = {"calls": 0, "collisions": 0, "asked": 0.0}

    def update(finished: int, total: int) -> None:
        now = time.monotonic()
        if now - counts["asked"] >= REPORT_EVERY_SECONDS:
            counts["asked"] = now
            with contextlib.suppress(ProviderUnreachable):
                report = provider.report()
                counts["calls"], counts["collisions"] = report["calls"], report["collisions"]
        status.update(
            f"{label}: {finished}/{total} invocations finished, {counts['calls']} calls, "
            f"{counts['collisions']} collisions, {now - started:.1f}s"
        )

    with console.status(f"{label}: starting", spinner="line") as status:
        yield update
