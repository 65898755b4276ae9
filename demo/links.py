"""Links into `pynenc monitor`'s invocation timeline, zoomed on one scenario or a whole run.

The monitor takes its window in the URL, in UTC without a zone; by default it would show
the last 5 minutes, where a 6-second demo is a sliver at the right edge. Running a monitor
and reading its pages is the tools' and the tests' (tools/monitor.py).
"""

from datetime import UTC, datetime
from urllib.parse import urlencode, urlsplit

from demo import settings

# Past this span, the monitor picks its own tick spacing; below it, 100 ms ticks read well.
FINE_SPAN_SECONDS = 15.0


def _utc(epoch: float) -> str:
    utc = datetime.fromtimestamp(epoch, UTC).replace(tzinfo=None)
    return utc.isoformat(timespec="milliseconds")


def timeline_url(base: str, start: float, end: float) -> str:
    """The timeline between two epoch times, without pynenc's own system tasks."""
    params = {
        "time_range": "custom",
        "start_date": _utc(start),
        "end_date": _utc(end),
        "resolution": "100ms" if end - start <= FINE_SPAN_SECONDS else "auto",
        "show_system": "0",
        "show_atomic_service": "0",
    }
    return f"{base.rstrip('/')}/invocations/timeline?{urlencode(params, safe=':')}"


def monitor_program(url: str) -> str:
    """`pynenc monitor`, answering where the links point (url), its host and port named."""
    at, default = urlsplit(url), urlsplit(settings.DEFAULTS["DEMO_MONITOR_URL"])
    if (at.hostname, at.port) == (default.hostname, default.port):
        return "pynenc monitor"
    return f"pynenc monitor --host {at.hostname} --port {at.port or 80}"
