"""One call per key (or up to N, at a rate) across pynenc workers, processes and hosts.

With a line per key for the calls that must wait, fencing tokens for the calls that outlive
their claim, and a draining stop.

    builder = PynencBuilder().app_id("my_app").sqlite("my.db").thread_runner(max_threads=8)
    app = keyclaim.install(builder, "sqlite", dead_after=15.0, longest_call=10.0).build()
    keyclaim.check(app)  # Refused, in one line, for what pynenc's resolved configuration breaks

Written and tested against pynenc 0.3.1 and 0.4.0 (SQLite), and pynenc 0.3.1 with pynenc-redis
0.3.0 (Redis): keyclaim.versions. The names below are the library's public ones; importing the
package imports pynenc only when one of them is first used, so a launcher can check versions
(`check_versions`) before anything starts.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

from keyclaim.errors import Fenced, Refused, UntestedVersion

if TYPE_CHECKING:  # the same names, for readers and type checkers
    from keyclaim.config import check, install, keep_connections, use_runner, windows_problem
    from keyclaim.fleet import alive_here, fleet_problem, join_fleet
    from keyclaim.limits import limit
    from keyclaim.orchestrator import counts, slot, token, waiting
    from keyclaim.redis_claim import redis_problem
    from keyclaim.versions import check as check_versions

_WHERE = {
    "install": ("keyclaim.config", "install"),
    "use_runner": ("keyclaim.config", "use_runner"),
    "keep_connections": ("keyclaim.config", "keep_connections"),
    "windows_problem": ("keyclaim.config", "windows_problem"),
    "alive_here": ("keyclaim.fleet", "alive_here"),
    "check": ("keyclaim.config", "check"),
    "token": ("keyclaim.orchestrator", "token"),
    "slot": ("keyclaim.orchestrator", "slot"),
    "limit": ("keyclaim.limits", "limit"),
    "counts": ("keyclaim.orchestrator", "counts"),
    "waiting": ("keyclaim.orchestrator", "waiting"),
    "fleet_problem": ("keyclaim.fleet", "fleet_problem"),
    "join_fleet": ("keyclaim.fleet", "join_fleet"),
    "redis_problem": ("keyclaim.redis_claim", "redis_problem"),
    "check_versions": ("keyclaim.versions", "check"),
}

__all__ = [
    "Fenced",
    "Refused",
    "UntestedVersion",
    "alive_here",
    "check",
    "check_versions",
    "counts",
    "fleet_problem",
    "install",
    "join_fleet",
    "keep_connections",
    "limit",
    "redis_problem",
    "slot",
    "token",
    "use_runner",
    "waiting",
    "windows_problem",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'keyclaim' has no attribute {name!r}")
    module, attribute = _WHERE[name]
    return getattr(import_module(module), attribute)
