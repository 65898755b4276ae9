"""How a scenario is shown as it ends: its summary, its link into the monitor, its chart."""

from dataclasses import dataclass

from demo import lanes, report
from demo.links import timeline_url
from demo.outcome import Outcome


@dataclass(frozen=True)
class View:
    """How runs are shown: with lane charts or not, and links into the monitor or not."""

    charts: bool = True
    monitor_url: str | None = None  # where the links point; None: no links (--no-links)
    # How to open the monitor on the run's state; None once that state is gone (a private Redis).
    monitor_command: str | None = "uv run pynenc monitor"

    def link(self, start: float, end: float, what: str = "monitor") -> str:
        """One line with a link into the monitor's timeline between two epoch times, or ""."""
        if self.monitor_url is None or self.monitor_command is None:
            return ""
        return f"  {what}: {timeline_url(self.monitor_url, start, end)}"

    def whole_run(self, outcomes: list[Outcome]) -> str:
        return self.link(outcomes[0].window[0], outcomes[-1].window[1], "the whole run")

    def ending(self, outcomes: list[Outcome]) -> str:
        """A run's last words: the whole run in the monitor and how to open it, or why not."""
        if self.monitor_url is None:
            return ""
        if self.monitor_command is None:
            return (
                "\n(no monitor links: the private Redis stopped; set REDIS_URL to keep the state)"
            )
        link = self.whole_run(outcomes)
        return f"\nSee it in pynenc's monitor; start it with: {self.monitor_command}\n{link}"


def outcome(outcome: Outcome, view: View, quiet: bool = False) -> Outcome:
    """Show a scenario's outcome: its summary, its monitor link and its lane chart, as the view
    says; quiet: only if it broke a promise. Returns it."""
    if not quiet or outcome.broken():
        print(report.summary(outcome), flush=True)
        if link := view.link(*outcome.window):
            print(link, flush=True)
        if view.charts:
            print(lanes.render(outcome.timeline), flush=True)
    return outcome
