"""What `install` writes into pynenc's configuration, and the check on what pynenc resolved.

pynenc ranks PYNENC__... variables and `[tool.pynenc]` above the builder, so `check` judges the
configuration pynenc resolved: untested versions, an override of a class the library selected,
and windows that would take a live holder for dead are refused. The top of the package: it
imports each class's module as it selects it, so that pynenc finds the class by name. Written
against pynenc 0.3.1 and 0.4.0 (`PynencBuilder.custom_config`, the class names `.sqlite()` and
`.redis()` select); retired with the classes it selects, once pynenc has them.
"""

from typing import TYPE_CHECKING

from keyclaim import config, versions
from keyclaim.errors import Refused

if TYPE_CHECKING:
    from pynenc import Pynenc, PynencBuilder

# The backend, by the orchestrator the builder selects: `.sqlite()` and `.redis()` select
# pynenc's own; keep_connections and an earlier install, the library's.
BACKENDS = {
    **dict.fromkeys(config.STOCK_SQLITE, "sqlite"),
    "RedisOrchestrator": "redis",
    **{cls: backend for backend, cls in config.ORCHESTRATORS.items()},
}


def use_runner(
    builder: "PynencBuilder",
    runner: str,
    drain_deadline: float = config.DEFAULT_DEADLINE,
    idle: float = config.DEFAULT_IDLE,
) -> "PynencBuilder":
    """Select one of the library's runners, with or without the claim: "drain" (pynenc's
    ThreadRunner, stopping by draining its calls) or "wake" (the same, woken by its own
    finishing calls instead of polling; its base sleep moves into the wait). Call it after the
    builder's own runner choice (`.thread_runner()` selects pynenc's ThreadRunner)."""
    from keyclaim import drain, wake  # noqa: F401 - pynenc finds the classes by name

    if runner not in config.RUNNERS:
        raise ValueError(f"runner {runner!r}: one of {', '.join(config.RUNNERS)}")
    chosen: dict[str, object] = {"runner_cls": config.RUNNERS[runner]}
    chosen[config.DEADLINE_KEY] = drain_deadline
    if runner == "wake":
        chosen.update({"runner_loop_sleep_time_sec": 0.0, config.IDLE_KEY: idle})
    return builder.custom_config(**chosen, **{config.SELECTED + "runner_cls": chosen["runner_cls"]})


def keep_connections(builder: "PynencBuilder") -> "PynencBuilder":
    """Select pynenc's SQLite classes with kept connections (one per thread at a time, each
    opened once, the journal mode set once per file), and no trigger lookups while no task is
    a trigger's source. Call it after .sqlite(); with or without the claim, before or after
    install. Checked by `check(app)` like the claim."""
    from keyclaim import connections, quiet  # noqa: F401 - pynenc finds the classes by name

    versions.check("kept connections", "sqlite")
    orchestrator = builder._config.get("orchestrator_cls")
    if orchestrator not in config.STOCK_SQLITE | {config.ORCHESTRATORS["sqlite"]}:
        raise Refused(
            f"kept connections are pynenc's SQLite classes; this builder selects "
            f"orchestrator_cls={orchestrator!r}: call it after .sqlite()"
        )
    chosen: dict[str, object] = {**config.KEPT, config.KEEP_KEY: True}
    if orchestrator in config.STOCK_SQLITE:  # the claim's own orchestrator keeps them already
        chosen["orchestrator_cls"] = config.KEPT_ORCHESTRATOR
    selected = {config.SELECTED + k: v for k, v in chosen.items() if k != config.KEEP_KEY}
    return builder.custom_config(**chosen, **selected)


def install(
    builder: "PynencBuilder",
    dead_after: float,
    longest_call: float,
    runner: str | None = "drain",
    drain_deadline: float = config.DEFAULT_DEADLINE,
    idle: float = config.DEFAULT_IDLE,
    purge_after: float | None = None,
) -> "PynencBuilder":
    """Switch the claim on: its orchestrator for the builder's backend, a dead-runner window
    of dead_after seconds (beats four times in it) longer than longest_call (the task's
    timeout), and a runner that drains its calls on a stop ("drain" or "wake"; None keeps the
    builder's): keyclaim/README.md, "Use". Call it after .sqlite() or .redis() and the runner
    choice; `check(app)` checks what pynenc resolved. Kept connections: `keep_connections`.
    purge_after: seconds a finished invocation's records are kept (keyclaim.history), written
    as pynenc's `auto_final_invocation_purge_hours`; None keeps pynenc's (24 h by default).
    """
    orchestrator = builder._config.get("orchestrator_cls")
    if (backend := BACKENDS.get(orchestrator)) is None:
        raise Refused(
            f"atomic claim: this builder selects orchestrator_cls={orchestrator!r}; the claim "
            "runs on pynenc's SQLite or Redis: call install after .sqlite() or .redis()"
        )
    versions.check("atomic claim", backend)
    if why := config.window_problem(dead_after, dead_after / config.BEATS_PER_WINDOW, longest_call):
        raise Refused(f"atomic claim: {why}")
    chosen: dict[str, object] = {}
    if backend == "redis":
        from keyclaim import quiet_redis, redis_claim  # noqa: F401 - pynenc finds them by name

        chosen = {
            "trigger_cls": config.QUIET_REDIS,
            config.SELECTED + "trigger_cls": config.QUIET_REDIS,
        }
    else:
        from keyclaim import sqlite_claim  # noqa: F401 - the same
    claim = config.ORCHESTRATORS[backend]
    builder = builder.custom_config(
        orchestrator_cls=claim,
        runner_considered_dead_after_minutes=dead_after / 60,
        # A runner writes its heartbeat when it checks the atomic services.
        atomic_service_check_interval_minutes=dead_after / config.BEATS_PER_WINDOW / 60,
        **{config.LONGEST_CALL_KEY: longest_call, config.SELECTED + "orchestrator_cls": claim},
        **chosen,
    )
    if purge_after is not None:
        builder = builder.custom_config(auto_final_invocation_purge_hours=purge_after / 3600)
    return builder if runner is None else use_runner(builder, runner, drain_deadline, idle)


def check(app: "Pynenc") -> None:
    """Raise Refused (UntestedVersion for versions), in one line, for what the resolved
    configuration would make lie. Cheap: it builds nothing, and reads no store."""
    conf, asked = app.conf, app.config_values or {}
    lineage = {name: _lineage(name, getattr(conf, name)) for name in BASES}
    versions.check_resolved(*(name for names in lineage.values() for name in names))
    for name in BASES:
        selected, resolved = asked.get(config.SELECTED + name), getattr(conf, name)
        if selected and selected not in lineage[name]:  # a subclass of it keeps what it does
            raise Refused(
                f"the atomic claim selects {name}={selected!r}, but pynenc's configuration "
                f"resolves {resolved!r} (PYNENC__{name.upper()}, [tool.pynenc], or a builder "
                "call after keyclaim.install): remove that override"
            )
    drains = asked.get(config.SELECTED + "runner_cls") == config.RUNNERS["drain"]
    if drains and asked.get("runner_loop_sleep_time_sec") == 0:
        raise Refused(
            "the draining runner was selected after the wake runner, whose loop sleep of 0 it "
            "keeps: it would poll the store without a pause. Select one runner, once"
        )
    claims = conf.orchestrator_cls in config.ORCHESTRATORS.values()
    if claims and (why := config.resolved_problem(app)):
        raise Refused(f"atomic claim: {why}")


# The classes the library selects, by configuration key: where pynenc finds them by name.
BASES = {
    "orchestrator_cls": "pynenc.orchestrator.base_orchestrator:BaseOrchestrator",
    "runner_cls": "pynenc.runner.base_runner:BaseRunner",
    "broker_cls": "pynenc.broker.base_broker:BaseBroker",
    "state_backend_cls": "pynenc.state_backend.base_state_backend:BaseStateBackend",
    "trigger_cls": "pynenc.trigger.base_trigger:BaseTrigger",
    "client_data_store_cls": "pynenc.client_data_store.base_client_data_store:BaseClientDataStore",
}


def _lineage(kind: str, name: str) -> list[str]:
    """The class pynenc resolves by this name, and the names of the classes it derives from."""
    from importlib import import_module

    from pynenc.util.subclasses import get_subclass

    module, base = BASES[kind].split(":")
    try:
        found = get_subclass(getattr(import_module(module), base), name)
    except ValueError:  # pynenc itself refuses an unknown name as it builds the class
        return [name]
    return [cls.__name__ for cls in found.__mro__]
