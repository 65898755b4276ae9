"""The pynenc versions the demo's configuration-installed classes were written and tested against.

demo/atomic_claim.py and demo/wake_runner.py change pynenc's behaviour from outside, through
its configuration. Each refuses to start on a version it was not tested with, in one line.
"""

from importlib import metadata

# (pynenc, pynenc-redis) pairs, per backend.
TESTED: dict[str, set[tuple[str, str | None]]] = {
    "sqlite": {("0.3.1", None), ("0.4.0", None)},
    "redis": {("0.3.1", "0.3.0")},
}


class UntestedVersion(SystemExit):
    """Refuses to start on versions the demo was not tested against: one line, no traceback."""


def version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def check(what: str, backend: str) -> None:
    """Raise UntestedVersion unless the installed versions were tested for `what` on backend."""
    if backend not in TESTED:
        raise UntestedVersion(f"{what}: no implementation for backend {backend!r}")
    found = (version("pynenc"), version("pynenc-redis") if backend == "redis" else None)
    if found in TESTED[backend]:
        return
    tested = " or ".join(
        f"pynenc {p}" + (f" with pynenc-redis {r}" if r else "") for p, r in sorted(TESTED[backend])
    )
    have = f"pynenc {found[0] or 'missing'}"
    if backend == "redis":
        have += f" with pynenc-redis {found[1] or 'missing'}"
    raise UntestedVersion(f"{what} ({backend}): tested with {tested}; this environment has {have}")
