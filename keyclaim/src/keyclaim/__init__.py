"""One call per key (or up to N, at a rate) across pynenc workers, processes and hosts.

    builder = PynencBuilder().app_id("my_app").sqlite("my.db").thread_runner(max_threads=8)
    app = keyclaim.install(builder, dead_after=15.0, longest_call=10.0).build()
    keyclaim.check(app)  # Refused, in one line, for what pynenc's resolved configuration breaks

Written and tested against pynenc 0.3.1 and 0.4.0 (SQLite), and pynenc 0.3.1 with pynenc-redis
0.3.0 (Redis): keyclaim.versions. What the programs around an app read is `keyclaim.inspect`;
importing either imports no pynenc. keyclaim/README.md says the rest.
"""

from keyclaim import inspect as inspect
from keyclaim.errors import Fenced, Refused, UntestedVersion
from keyclaim.installer import check, install, keep_connections, use_runner
from keyclaim.limits import limit
from keyclaim.tokens import slot, token

__all__ = [
    "Fenced",
    "Refused",
    "UntestedVersion",
    "check",
    "install",
    "keep_connections",
    "limit",
    "slot",
    "token",
    "use_runner",
]
