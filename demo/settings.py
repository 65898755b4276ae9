"""Every knob of the demo, defined once.

Each knob is an environment variable with a default, read by every process: the API, the
workers, and the scripts, whose flags take their defaults from it. sample.py hands its parsed
flags to its children as these same variables, in one place (demo/flags.py).
"""

import contextlib
import importlib.util
import ipaddress
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
RUNNER_NAMES = ("thread", "wake", "multi-thread", "process")


def _choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return raw

    return parse


def _seconds(low: float, high: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        with contextlib.suppress(ValueError):  # not a number: said as one out of range
            if low < (seconds := number(raw)) <= high:  # NaN fails both
                return seconds
        raise ValueError(f"expected seconds, more than {low:g} and at most {high:g}")

    return parse


def whole_number(raw: str) -> int:
    """A whole number in the digits 0-9, a minus allowed so a range check can say what fits.

    int() alone also reads other scripts' digits: full-width "８７６５" would be port 8765.
    """
    if not re.fullmatch(r"-?[0-9]+", raw):
        raise ValueError("expected a whole number, in the digits 0-9")
    return int(raw)


def number(raw: str) -> float:
    """A number written in ASCII: float() alone also reads other scripts' digits."""
    if not raw.isascii():
        raise ValueError("expected a number, in the digits 0-9")
    return float(raw)


def _port(raw: str) -> int:
    if not re.fullmatch(r"[0-9]+", raw) or not 1 <= int(raw) <= 65535:
        raise ValueError("expected a port number from 1 to 65535")
    return int(raw)


def _host(raw: str) -> str:
    try:
        ipaddress.ip_address(raw)
    except ValueError:
        # Four groups of digits is an IPv4 address to every URL parser (httpx: InvalidURL),
        # never a name to look up: 256.1.1.1 is a typo, not a host.
        if re.fullmatch(r"[0-9]+(\.[0-9]+){3}", raw):
            raise ValueError("expected an IPv4 address: 4 numbers 0-255, no leading 0") from None
        if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})", raw):
            raise ValueError("expected a host name or an IP address") from None
    return raw


def _url(*schemes: str, empty: bool = False) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if empty and raw == "":
            return raw
        parts = urlsplit(raw)
        if parts.scheme not in schemes or not parts.hostname:
            shown = " or ".join(f"{s}://host:port/..." for s in schemes)
            raise ValueError(f"expected {shown}" + (", or nothing" if empty else ""))
        return raw

    return parse


def _path(raw: str) -> str:
    if not raw.strip():
        raise ValueError("expected a file path")
    return raw


@dataclass(frozen=True)
class Knob:
    default: str
    parse: Callable[[str], object]


KNOBS: dict[str, Knob] = {
    "DEMO_API_HOST": Knob("127.0.0.1", _host),
    "DEMO_API_PORT": Knob("8765", _port),
    "DEMO_DB": Knob("concurrency_demo.db", _path),
    "DEMO_BACKEND": Knob("sqlite", _choice("sqlite", "redis")),
    "REDIS_URL": Knob("", _url("redis", "rediss", empty=True)),
    "DEMO_LOG_LEVEL": Knob("info", _choice(*LOG_LEVELS)),
    # Where sample.py writes the API's and the workers' logs.
    "DEMO_LOG_DIR": Knob(".demo", _path),
    # A worker polls its queue in a loop; docs/speed.md explains the choice.
    "DEMO_RUNNER_SLEEP": Knob("0.1", _seconds(0, 10)),
    # Seconds for a scenario's invocations to finish, and for the API and workers to come up.
    "DEMO_TIMEOUT": Knob("60", _seconds(0, 3600)),
    "DEMO_READY_TIMEOUT": Knob("30", _seconds(0, 3600)),
    # "1": check the key and claim in one atomic step, so the rule holds across workers.
    "DEMO_ATOMIC_CLAIM": Knob("0", _choice("0", "1")),
    # With the claim: seconds without a heartbeat after which a runner's claims are recovered.
    "DEMO_DEAD_AFTER": Knob("15", _seconds(0, 3600)),
    # The task's HTTP timeout: the longest a call can stay in flight. The dead-after window
    # must be longer, and a stopping worker drains its calls for about this long.
    "DEMO_CALL_TIMEOUT": Knob("10", _seconds(0, 600)),
    # Where `pynenc monitor` answers: the summaries link into its timeline.
    "DEMO_MONITOR_URL": Knob("http://127.0.0.1:8000", _url("http", "https")),
    # Which runner a worker is: the article's "thread", "wake" (docs/speed.md),
    # or pynenc's "multi-thread" or "process" (docs/scale-out.md); demo/runners.py.
    "DEMO_RUNNER": Knob("thread", _choice(*RUNNER_NAMES)),
    # With the claim, how pynenc's SQLite classes get a connection: "kept" (keyclaim's
    # keep_connections) or "pynenc", one opened for every operation, to measure the difference
    # (docs/speed.md). Without the claim, pynenc's own, whatever it says.
    "DEMO_SQLITE_CONNECTIONS": Knob("kept", _choice("kept", "pynenc")),
}
DEFAULTS: dict[str, str] = {name: knob.default for name, knob in KNOBS.items()}


def problems() -> list[str]:
    """One line per environment variable whose value does not fit, naming what would."""
    found = []
    for name, knob in KNOBS.items():
        if name in os.environ:
            try:
                knob.parse(os.environ[name])
            except ValueError as exc:
                found.append(f"{name}={os.environ[name]!r}: {exc}")
    return found


class BadSetting(ValueError):
    """An environment variable whose value does not fit, or a backend whose plugin is missing:
    one line. A ValueError, so pynenc's `--app` loader reports it as tasks.py is imported in
    one line ("Failed to load application: ...") and exit 1."""


def check_environment() -> None:
    """Raise BadSetting for the first bad variable, naming what would fit."""
    if found := problems():
        raise BadSetting(found[0])
    if get("DEMO_BACKEND") == "redis" and importlib.util.find_spec("pynenc_redis") is None:
        raise BadSetting(
            "DEMO_BACKEND=redis needs the pynenc-redis plugin, in the optional `redis` group: "
            "run it with uv run --isolated --group redis ..."
        )


def exit_on_bad_environment(program: str) -> None:
    """Before anything starts: one line on stderr for the first bad variable, and exit 2."""
    try:
        check_environment()
    except BadSetting as bad:
        print(f"{program}: {bad}", file=sys.stderr)
        raise SystemExit(2) from None


# MultiThreadRunner's ThreadRunner processes per worker (demo/runners.py).
PROCESSES = 2


def get(name: str) -> str:
    return os.environ.get(name, DEFAULTS[name])


def seconds(name: str) -> float:
    """A knob in seconds (DEMO_CALL_TIMEOUT, ...), parsed by its own rule."""
    return float(KNOBS[name].parse(get(name)))  # type: ignore[arg-type]


# A stopping worker waits this much longer than a call can take: its final status writes.
DRAIN_MARGIN_SECONDS = 2.0


def drain_deadline() -> float:
    """How long a stopping worker lets its calls finish before it exits holding them."""
    return seconds("DEMO_CALL_TIMEOUT") + DRAIN_MARGIN_SECONDS


def command(program: str, env: Mapping[str, str], shared: tuple[str, ...] = ()) -> str:
    """The line that runs `program` (a worker, the monitor) on the state env names, on top of
    this process's settings, with each of `shared` that is not its default."""
    value = {n: env.get(n) or get(n) for n in ("DEMO_BACKEND", "REDIS_URL", "DEMO_DB", *shared)}
    if value["DEMO_BACKEND"] == "redis":
        named = ["DEMO_BACKEND=redis", f"REDIS_URL={value['REDIS_URL']}"]
        uv = "uv run --isolated --group redis"
    else:
        named, uv, shared = [], "uv run", ("DEMO_DB", *shared)
    named += [f"{n}={value[n]}" for n in shared if value[n] != DEFAULTS[n]]
    return " ".join([*named, uv, program])


def api_url(host: str | None = None, port: int | str | None = None) -> str:
    return f"http://{host or get('DEMO_API_HOST')}:{port or get('DEMO_API_PORT')}"
