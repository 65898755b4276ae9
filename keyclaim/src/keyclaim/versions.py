"""The pynenc versions each of the library's classes was written and tested against.

The classes change pynenc's behaviour from outside, through its configuration: each refuses to
be built on a version it was not tested with, in one line (UntestedVersion). Reading versions
needs no pynenc import, so a launcher can check before it starts anything.
"""

from keyclaim.errors import UntestedVersion

# (pynenc, pynenc-redis) pairs, per backend. pyproject.toml's range says the same.
TESTED: dict[str, set[tuple[str, str | None]]] = {
    "sqlite": {("0.3.1", None), ("0.4.0", None)},
    "redis": {("0.3.1", "0.3.0")},
}

# The classes the library adds, by the name pynenc selects them by: what each is called in a
# refusal, and its backend (None: the app's).
CLASSES: dict[str, tuple[str, str | None]] = {
    "AtomicClaimSQLiteOrchestrator": ("atomic claim", "sqlite"),
    "AtomicClaimRedisOrchestrator": ("atomic claim", "redis"),
    "DrainingThreadRunner": ("draining runner", None),
    "WakeRunner": ("wake runner", None),
    "KeptSQLiteOrchestrator": ("kept connections", "sqlite"),
    "KeptSQLiteBroker": ("kept connections", "sqlite"),
    "KeptSQLiteStateBackend": ("kept connections", "sqlite"),
    "KeptSQLiteTrigger": ("kept connections", "sqlite"),
    "KeptSQLiteClientDataStore": ("kept connections", "sqlite"),
    "QuietRedisTrigger": ("quiet trigger", "redis"),
}


def version(distribution: str) -> str | None:
    from importlib import metadata  # here: 0.03 s a launcher need not spend before it starts

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


def check_resolved(orchestrator_cls: str, *classes: str) -> None:
    """Raise UntestedVersion unless each of the library's classes that pynenc resolved (and
    those they derive from), however selected, was tested with these versions."""
    backend = "redis" if "Redis" in orchestrator_cls else "sqlite"
    for name in (orchestrator_cls, *classes):
        if name in CLASSES:
            what, fixed = CLASSES[name]
            check(what, fixed or backend)
