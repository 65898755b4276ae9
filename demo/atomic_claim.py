"""One call per key across runner processes, and a line per key for the calls that must wait.

Install it through pynenc's own configuration, after choosing the backend:

    builder = PynencBuilder().app_id("my_app").sqlite("my.db")   # or .redis(url=...)
    builder = atomic_claim.install(builder, "sqlite", dead_after=15.0, longest_call=10.0)
    app = builder.build()
    atomic_claim.exit_unless_sound("my_app.py", app, wanted=True)

Every process that builds the app (workers and producers) must install it: the producer parks.
Written and tested against pynenc 0.3.1 and 0.4.0 (SQLite), and pynenc 0.3.1 with pynenc-redis
0.3.0 (Redis). Any other version is refused in one line, wherever the classes are built.

Why it exists. `BaseOrchestrator.get_additional_invocations_to_run` asks
`is_candidate_to_run_by_concurrency_control` whether an invocation with the same key is PENDING
or RUNNING, and only then moves its own invocation to PENDING, in a separate write: two runner
processes can both read "free" and both run. A blocked invocation is written
CONCURRENCY_CONTROLLED, then REROUTED, and sent to the back of the queue, so every runner cycle
walks every busy account's whole backlog: one hot account delays all the others, and its own
calls run in no particular order. A drop on a REROUTED invocation is refused
(`InvocationStatusTransitionError`) and ends the runner loop.

What it does. Each key (the task and its key arguments) has at most one *holder*: the one
invocation that may be on the queue, pending or running. A call for a busy key waits in the
key's *line*, in arrival order, and is not on the queue at all:
- registering a call either makes it the holder and queues it, or parks it at the end of its
  line (tasks that drop blocked calls are queued as usual, to be dropped when claimed);
- claiming a call (SQLite `BEGIN IMMEDIATE`; Redis `WATCH`/`MULTI`, retried a bounded number of
  times with backoff) reads its status and the key's holder, and in the same step writes PENDING
  with the key's next fencing token, parks it, or drops it;
- the final status of the holder (success, failure, a drop) hands the key to the head of its
  line and queues it, in the same step as the status write.
A parked call keeps its status (REGISTERED, for a new one), so `registration_concurrency` still
merges duplicates into it. No lock or service outside pynenc's own store.

Faults. A holder whose runner has sent no heartbeat for `dead_after` seconds is recovered
through pynenc's own statuses (RUNNING_RECOVERY, REROUTED) and queued again: it keeps the key and
runs before the calls behind it. A runner that was only stalled may still finish that call, so
the task sends the claim's fencing token (`token(app)`) and the provider refuses a call older
than the newest it has seen for the key; an outcome that comes back after its claim was taken
away is not stored. The windows are checked against the configuration pynenc resolved
(environment variables and `[tool.pynenc]` rank above the builder): `dead_after` must be longer
than the longest a call can stay in flight, and runners must beat at least three times in it.

The upstream change that retires this module: per-key holders and lines in `BaseOrchestrator`
(`claim_for_run`, park at registration, hand-over on a final status), fencing tokens, outcomes
stored only while the claim holds, and REROUTED -> CONCURRENCY_CONTROLLED_FINAL allowed in
`pynenc/invocation/status.py`; docs/upstream.md writes it out.
"""

import atexit
import enum
import json
import os
import random
import socket
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pynenc import context
from pynenc.conf.config_task import ConcurrencyControlType
from pynenc.exceptions import InvocationStatusError
from pynenc.invocation.status import (
    InvocationStatus,
    InvocationStatusRecord,
    status_record_transition,
)
from pynenc.orchestrator.sqlite_orchestrator import SQLiteOrchestrator

from demo import pynenc_versions

if TYPE_CHECKING:
    from pynenc import Pynenc, PynencBuilder
    from pynenc.identifiers.invocation_id import InvocationId
    from pynenc.invocation.dist_invocation import DistributedInvocation
    from pynenc.runner.runner_context import RunnerContext

try:  # Only the Redis backend needs the plugin; without it, only SQLite is offered.
    from pynenc_redis.orchestrator import RedisOrchestrator
    from redis.client import Pipeline
    from redis.exceptions import WatchError
except ImportError:  # pragma: no cover - depends on the environment
    RedisOrchestrator = None  # type: ignore[assignment,misc]

ORCHESTRATORS = {"sqlite": "AtomicClaimSQLiteOrchestrator", "redis": "AtomicClaimRedisOrchestrator"}
# The claim hands its token to the runner on the invocation it yields (another process asks the
# store for it).
TOKEN_ATTRIBUTE = "fence_token"
# Set by install(): the longest a call can stay in flight (the task's HTTP timeout), in seconds.
LONGEST_CALL_KEY = "atomic_claim_longest_call_sec"
BEATS_PER_WINDOW = 4  # what install() asks for
FEWEST_BEATS = 3  # what the check accepts: one lost beat must not look like a death
# Redis: a claim whose watched keys keep changing is tried this often, with growing pauses.
REDIS_ATTEMPTS = 50
BACKOFF_SECONDS = (0.001, 0.05)  # first pause, longest pause
S = InvocationStatus
HELD = (S.PENDING, S.RUNNING)
# A holder in one of these moves no further by itself: it ended, or a process died between two
# of pynenc's writes (KILLED then REROUTED; a recovery status then REROUTED).
UNMOVING = frozenset({*S.get_final_statuses(), S.KILLED, S.RUNNING_RECOVERY, S.PENDING_RECOVERY})


class Refused(SystemExit):
    """The claim would not hold with this configuration: one line, no traceback."""


class Fenced(Exception):
    """The provider refused the call by its fencing token: a newer claim of the key came first,
    so this call was not applied. Raised by the task, the invocation fails (or retries, where
    the task says so): a refused call is never reported as a success."""


class StatusContention(InvocationStatusError):
    """A watched Redis status change that other writers kept beating, every time it was tried."""


class Verdict(enum.Enum):
    RUN = "claimed: now PENDING, the key's holder"
    PARK = "key busy: waits at the end of its line, off the queue"
    DROP = "key busy: CONCURRENCY_CONTROLLED_FINAL"
    LEAVE = "key busy: left as it is (the blocking path reads it from elsewhere)"
    REQUEUE = "not decided (Redis kept changing under it): back to the queue unchanged"
    SKIP = "not available for run (another runner has it, or it is final)"


# Every liveness decision reads one clock: the store's (Redis TIME), or on SQLite, whose workers
# share one host, that host's clock since boot, read from the kernel (demo: host_clock). A
# worker's wall clock never enters one: skewed, it would take a live holder for dead.
EVER = 10 * 365 * 86400.0  # seconds: a window that takes in every runner pynenc knows
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
UPTIME = Path("/proc/uptime")


def _boot() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:  # pragma: no cover - not Linux: the monotonic clock, shared by the host
        return "monotonic"


BOOT = _boot()


def host_clock() -> float:
    """Seconds since this host booted, as the kernel counts them: the same for every process
    on the host, whatever its wall clock says (skewed, or under faketime, which shifts even the
    process's monotonic clocks but not this file). A beat is read with the boot it was taken
    in: one from an earlier boot is no beat at all."""
    try:
        return float(UPTIME.read_text().split()[0])
    except OSError:  # pragma: no cover - not Linux
        return time.monotonic()


def first_token(now: float) -> int:
    """A key's first fencing token: the time in microseconds. Tokens then grow by one per claim,
    so a store that lost its data (a Redis restarted without persistence, a new database) still
    issues tokens newer than any it issued before, and the provider never fences them."""
    return int(now * 1_000_000)


def key_identity(key: dict[str, str]) -> str:
    """The key as the provider sees it: each argument as text. pynenc serializes 42 and "42"
    apart, but in a URL, a header or a column they are one account, so they are one key here."""

    def text(serialized: str) -> str:
        try:
            value = json.loads(serialized)
        except ValueError:
            return serialized
        return value if isinstance(value, str) else serialized

    return json.dumps({arg: text(value) for arg, value in key.items()}, sort_keys=True)


@dataclass
class Holder:
    """The invocation holding a key: its status, and when its runner last beat (on the store's
    clock; None when it never beat in this boot)."""

    invocation_id: str
    record: InvocationStatusRecord
    heartbeat: float | None

    def silent_since(self, alive_since: float) -> bool:
        """Pending or running under a runner that has not beaten since alive_since."""
        if self.record.status not in HELD:
            return False  # queued, or between two statuses: it is not waiting on a runner
        # No beat at all (a store that lost its beats, say): not silent yet. The sweep records
        # a first beat for it now (silent_runners), and judges it a window later.
        return self.heartbeat is not None and self.heartbeat < alive_since


@dataclass
class Decision:
    verdict: Verdict
    # Status records to write in the same step, in order: (invocation id, record).
    writes: list[tuple[str, InvocationStatusRecord]] = field(default_factory=list)
    # A silent holder, recovered: it keeps the key and is queued again in the same step.
    recovered: str | None = None
    takes_key: bool = False  # the key had no holder: this invocation becomes it
    token: int | None = None  # with RUN on a key: the fencing token issued


def recovery(record: InvocationStatusRecord, runner_id: str) -> list[InvocationStatusRecord]:
    """pynenc's recovery of a PENDING or RUNNING invocation whose runner went silent: through
    PENDING_RECOVERY or RUNNING_RECOVERY to REROUTED, in one step, to be queued again."""
    via = S.RUNNING_RECOVERY if record.status is S.RUNNING else S.PENDING_RECOVERY
    recovering = status_record_transition(record, via, runner_id)
    return [recovering, status_record_transition(recovering, S.REROUTED, runner_id)]


def check_versions(backend: str) -> None:
    """Raise UntestedVersion unless the installed versions are ones this module was tested with."""
    pynenc_versions.check("atomic claim", backend)


def window_problem(dead_after: float, beat_every: float, longest_call: float | None) -> str | None:
    """Why these windows would let the claim lie, in one line; None when they are sound."""
    if longest_call is None:
        return "the longest a call can stay in flight is not configured: select the claim with "
    if dead_after <= longest_call:
        return (
            f"a runner silent for {dead_after:g}s is taken for dead, but a call may stay in "
            f"flight for {longest_call:g}s (the task's HTTP timeout): the dead-after window must "
            "be longer (DEMO_DEAD_AFTER), or the timeout shorter (DEMO_CALL_TIMEOUT)"
        )
    if beat_every * FEWEST_BEATS > dead_after:
        return (
            f"runners beat every {beat_every:g}s (atomic_service_check_interval_minutes), "
            f"fewer than {FEWEST_BEATS} times in the {dead_after:g}s dead-after window: a live "
            "runner would be taken for dead (is PYNENC__ATOMIC_SERVICE_CHECK_INTERVAL_MINUTES "
            "or [tool.pynenc] overriding it?)"
        )
    return None


def resolved_problem(app: "Pynenc") -> str | None:
    """window_problem for the configuration pynenc resolved, overrides included."""
    longest = (app.config_values or {}).get(LONGEST_CALL_KEY)
    why = window_problem(
        app.conf.runner_considered_dead_after_minutes * 60,
        app.conf.atomic_service_check_interval_minutes * 60,
        None if longest is None else float(longest),
    )
    if why and longest is None:
        why += "atomic_claim.install(builder, backend, dead_after, longest_call)"
    return why


def exit_unless_sound(program: str, app: "Pynenc", wanted: bool) -> None:
    """Refuse to start, in one line and exit 2, what the resolved configuration makes lie: any
    of the demo's classes on a pynenc it was not tested with, the claim's windows, and, when
    the claim was asked for (DEMO_ATOMIC_CLAIM=1), an orchestrator or runner other than the
    one the builder selected (PYNENC__ORCHESTRATOR_CLS, PYNENC__RUNNER_CLS and [tool.pynenc]
    rank above the builder): another runner would not drain its calls on a stop.
    """
    conf, asked = app.conf, app.config_values or {}
    try:
        pynenc_versions.check_resolved(conf.orchestrator_cls, conf.runner_cls)
        for name in ("orchestrator_cls", "runner_cls") if wanted else ():
            if (selected := asked.get(name)) and (resolved := getattr(conf, name)) != selected:
                raise Refused(
                    f"the atomic claim selects {name}={selected!r}, but pynenc's configuration "
                    f"resolves {resolved!r} (PYNENC__{name.upper()} or [tool.pynenc]): remove "
                    "that override, or drop DEMO_ATOMIC_CLAIM"
                )
        if conf.orchestrator_cls in ORCHESTRATORS.values() and (why := resolved_problem(app)):
            raise Refused(f"atomic claim: {why}")
    except SystemExit as refused:
        print(f"{program}: {refused}", file=sys.stderr)
        raise SystemExit(2) from None


# The fleet: every worker on one store must run the claim with the same settings. One without
# it (or with other windows) beside workers with it takes a key the others think is held.
FLEET_WINDOW = 75.0  # seconds: pynenc's heartbeat within it, on the reader's wall clock
FLEET = "claim_fleet"
FLEET_MEMBER = "_atomic_claim_fleet_member"  # on the app: this process's record, once joined


@dataclass(frozen=True)
class Member:
    """A worker on the store, as it recorded itself when it started."""

    runner_id: str
    settings: dict[str, str]
    pid: int
    host: str

    def __str__(self) -> str:
        return (
            f"runner {self.runner_id[:8]} (pid {self.pid} on {self.host}: {_shown(self.settings)})"
        )


def fleet_settings(app: "Pynenc") -> dict[str, str]:
    """What every worker and producer on one store must agree on: the claim, and its windows."""
    conf = app.conf
    if conf.orchestrator_cls not in ORCHESTRATORS.values():
        return {"atomic claim": "off"}
    longest = (app.config_values or {}).get(LONGEST_CALL_KEY)
    return {
        "atomic claim": "on",
        "dead after": f"{conf.runner_considered_dead_after_minutes * 60:g}s",
        "beat every": f"{conf.atomic_service_check_interval_minutes * 60:g}s",
        "longest call": "?" if longest is None else f"{float(longest):g}s",
    }


def _shown(settings: dict[str, str]) -> str:
    return ", ".join(f"{name} {value}" for name, value in settings.items())


class _FleetStore:
    """The fleet's records, in the app's own store, read and written whether or not this
    process runs the claim (a process without it must be told, too)."""

    def __init__(self, app: "Pynenc") -> None:
        self.app, self.orchestrator = app, app.orchestrator
        self.redis = hasattr(self.orchestrator, "client")

    def _sqlite(self) -> tuple[sqlite3.Connection, str]:
        table = f"{self.orchestrator.tables.table_prefix}_{FLEET}"
        conn = sqlite3.connect(self.orchestrator.sqlite_db_path, timeout=30.0)
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {table} (runner_id TEXT PRIMARY KEY, record TEXT NOT NULL)"
        )
        return conn, table

    def records(self) -> dict[str, str]:
        if self.redis:
            raw = self.orchestrator.client.hgetall(self.orchestrator.key.prefix + FLEET)
            return {k.decode(): v.decode() for k, v in raw.items()}
        conn, table = self._sqlite()
        with closing(conn):
            return dict(conn.execute(f"SELECT runner_id, record FROM {table}").fetchall())

    def write(self, runner_id: str, record: str) -> None:
        if self.redis:
            self.orchestrator.client.hset(self.orchestrator.key.prefix + FLEET, runner_id, record)
            return
        conn, table = self._sqlite()
        with closing(conn), conn:
            conn.execute(f"INSERT OR REPLACE INTO {table} VALUES (?, ?)", (runner_id, record))

    def remove(self, runner_id: str) -> None:
        if self.redis:
            self.orchestrator.client.hdel(self.orchestrator.key.prefix + FLEET, runner_id)
            return
        conn, table = self._sqlite()
        with closing(conn), conn:
            conn.execute(f"DELETE FROM {table} WHERE runner_id = ?", (runner_id,))

    def beating(self) -> set[str]:
        """The runners with a pynenc heartbeat in the fleet window. pynenc's own list, on the
        reader's wall clock: a start-up check, generous enough for any skew under it."""
        orchestrator = self.orchestrator
        stock = (
            super(AtomicClaim, orchestrator)
            if isinstance(orchestrator, AtomicClaim)
            else orchestrator
        )
        return {r.runner_id for r in stock._get_active_runners(FLEET_WINDOW, None)}


def _alive_here(pid: int) -> bool:
    """Whether the process still runs pynenc (on Linux; elsewhere, whether it exists). The
    demo's live.py asks the same; the claim keeps its own answer, to stand apart from it."""
    if Path("/proc").is_dir():
        try:
            return b"pynenc" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fleet(app: "Pynenc", besides: str | None = None) -> list[Member]:
    """The live workers on the app's store (but `besides`), as they recorded themselves: on
    this host, a pynenc process still there (beating yet or not); elsewhere, a recent beat."""
    store, here = _FleetStore(app), socket.gethostname()
    records, members = store.records(), []
    beating = (
        store.beating() if any(json.loads(r)["host"] != here for r in records.values()) else set()
    )
    for runner_id, raw in records.items():
        record = json.loads(raw)
        member = Member(runner_id, record["settings"], int(record["pid"]), record["host"])
        if runner_id == besides:
            continue
        if _alive_here(member.pid) if member.host == here else runner_id in beating:
            members.append(member)
    return members


def fleet_problem(app: "Pynenc", besides: str | None = None) -> str | None:
    """Why this process must not join the workers live on its store, in one line, naming both
    sides; None when every one of them runs with its settings."""
    mine = fleet_settings(app)
    for member in fleet(app, besides):
        if member.settings != mine:
            return (
                f"this process runs with {_shown(mine)}, but a live worker on the same store "
                f"runs with other settings: {member}. Every worker and producer on one store "
                "must agree: give them all the same settings, or stop those workers first"
            )
    return None


def join_fleet(app: "Pynenc", runner_id: str) -> str | None:
    """A worker's start: refuse (the one line) a fleet it does not agree with; else record its
    settings, for the next ones to check, until this process ends."""
    if why := fleet_problem(app, besides=runner_id):
        return why
    store, pid = _FleetStore(app), os.getpid()
    record = {"settings": fleet_settings(app), "pid": pid, "host": socket.gethostname()}
    store.write(runner_id, json.dumps(record))
    setattr(app, FLEET_MEMBER, (runner_id, json.dumps(record)))  # rewritten with each beat

    def leave() -> None:
        if os.getpid() == pid:  # not in a forked child (ProcessRunner), which inherits this
            with suppress(Exception):  # the store may be gone first: then so is the record
                store.remove(runner_id)

    atexit.register(leave)
    return None


def check_redis(url: str) -> str | None:
    """Why the Redis at url cannot run the claim (it refuses WATCH/MULTI/EXEC), or None."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        client.transaction(lambda pipe: pipe.multi(), "atomic-claim:probe")
    except redis.RedisError as exc:
        return f"the Redis at {url} refuses WATCH/MULTI/EXEC, which the claim needs ({exc})"
    finally:
        client.close()
    return None


def install(
    builder: "PynencBuilder", backend: str, dead_after: float, longest_call: float
) -> "PynencBuilder":
    """Select the claiming orchestrator for backend, a dead-runner window of dead_after seconds,
    and the longest a call can stay in flight (the task's timeout), which the window must exceed.

    Call it after .sqlite() or .redis(), which set pynenc's stock orchestrator. Versions and
    windows are checked once pynenc has resolved its configuration: exit_unless_sound.
    """
    beat_every = dead_after / BEATS_PER_WINDOW
    return builder.custom_config(
        orchestrator_cls=ORCHESTRATORS[backend],
        runner_considered_dead_after_minutes=dead_after / 60,
        # A runner writes its heartbeat when it checks the atomic services.
        atomic_service_check_interval_minutes=beat_every / 60,
        **{LONGEST_CALL_KEY: longest_call},
    )


def token(app: "Pynenc") -> int | None:
    """The fencing token of the invocation running in this thread; None without the claim."""
    invocation = context.get_dist_invocation_context(app.app_id)
    if invocation is None:
        return None
    if (issued := getattr(invocation, TOKEN_ATTRIBUTE, None)) is not None:
        return issued  # handed over with the claim, in this process
    lookup = getattr(app.orchestrator, "fence_token", None)
    return lookup(invocation.invocation_id) if lookup else None


def key_arguments(invocation: "DistributedInvocation") -> dict[str, str] | None:
    """The key's serialized arguments; None when the task has no running control."""
    mode = invocation.task.conf.running_concurrency
    if mode == ConcurrencyControlType.DISABLED:
        return None
    return invocation.call.serialized_args_for_concurrency_control(mode) or {}


def line_key(invocation: "DistributedInvocation", key: dict[str, str]) -> str:
    """The key's line, and its sequence of tokens. Under KEYS, its argument values (as text),
    whichever task calls for them: pynenc scopes KEYS per task, but the provider protects the
    account, and two tasks keyed on one account_id are one account to it. Under TASK and
    ARGUMENTS (an empty key, or every argument), the task's own, as pynenc scopes them."""
    conf = invocation.task.conf
    if conf.running_concurrency == ConcurrencyControlType.KEYS and key:
        return key_identity(key)
    return f"{invocation.task.task_id.key}|{key_identity(key)}"


def waits_in_line(invocation: "DistributedInvocation") -> bool:
    """Blocked calls of this task wait (reroute); the others are dropped when claimed."""
    return bool(invocation.task.conf.reroute_on_concurrency_control)


class AtomicClaim:
    """The backend-independent half: the loop that claims, and what a claim decides."""

    app: Any
    BACKEND: str

    def __init__(self, app: "Pynenc") -> None:
        # Wherever pynenc builds this class (by name, from any configuration): the same guard.
        check_versions(self.BACKEND)
        if why := resolved_problem(app):
            raise Refused(f"atomic claim: {why}")
        super().__init__(app)  # type: ignore[call-arg]
        self._next_sweep = 0.0
        self._unqueued_seen: set[str] = set()
        self._stuck_seen: set[str] = set()

    # Each backend: the atomic steps.

    def claim_in_store(
        self, invocation: "DistributedInvocation", runner_id: str, dead_after: float, busy: Verdict
    ) -> Decision:  # pragma: no cover - each backend overrides it
        """In one step: read the invocation and its key's holder (silent for dead_after seconds
        on the store's clock: recovered), decide, write, and issue the token."""
        raise NotImplementedError

    def beat_in_store(self, runner_ids: list[str]) -> None:  # pragma: no cover - per backend
        """Each runner's heartbeat, on the store's clock."""
        raise NotImplementedError

    def silent_runners(
        self, runner_ids: set[str], window: float, adopt: bool = False
    ) -> set[str]:  # pragma: no cover - per backend
        """Those of runner_ids with no heartbeat in the last window seconds of the store's
        clock. One the store has no beat of is silent, unless adopt: then (the recovery's
        question: a store that lost its beats, say) it is not taken for dead; its first beat
        is recorded now, and it is judged a window later."""
        raise NotImplementedError

    def pending_too_long(self, window: float) -> list[str]:  # pragma: no cover - per backend
        """PENDING invocations claimed more than window seconds ago, on the store's clock."""
        raise NotImplementedError

    def admit_in_store(self, invocation: "DistributedInvocation") -> bool:  # pragma: no cover
        """Index the key, then queue the invocation (True) or park it in its line (False)."""
        raise NotImplementedError

    def fence_token(self, invocation_id: str) -> int | None:  # pragma: no cover - per backend
        raise NotImplementedError

    def recover_in_store(
        self, invocation_id: str, runner_id: str, dead_after: float, max_pending: float
    ) -> list[InvocationStatusRecord]:  # pragma: no cover - per backend
        """In one step: recover the invocation if it is still RUNNING under a runner silent for
        dead_after seconds, or PENDING for max_pending (the store's clock), and queue it again."""
        raise NotImplementedError

    def holders_to_heal(self) -> tuple[list[str], list[str]]:  # pragma: no cover - per backend
        """The keys' holders that may need healing: (ended or stuck, available but unqueued)."""
        raise NotImplementedError

    def heal_in_store(
        self, invocation_id: str, runner_id: str, stuck: bool, requeue: bool
    ) -> list[InvocationStatusRecord]:  # pragma: no cover - per backend
        """In one step, for a holder still in that state: an ended one hands its key on; one
        stuck between two of pynenc's statuses (KILLED, a recovery; stuck: seen so on the last
        sweep too) is rerouted and queued; an available one missing from the queue is queued
        (requeue)."""
        raise NotImplementedError

    # Liveness, on the store's clock, for pynenc too: its recovery tasks and its list of active
    # runners ask these, and each asked the runner's own wall clock.

    def register_runner_heartbeats(self, runner_ids: list[str], *args: Any, **kwargs: Any) -> None:
        """pynenc's beat, and the claim's on the store's clock (pynenc 0.4.0 adds the queues
        a runner consumes: passed on as they come)."""
        super().register_runner_heartbeats(runner_ids, *args, **kwargs)  # type: ignore[misc]
        self.beat_in_store(list(runner_ids))
        if (member := getattr(self.app, FLEET_MEMBER, None)) and member[0] in runner_ids:
            _FleetStore(self.app).write(*member)  # again: a store that lost its data forgets

    def _get_active_runners(
        self, timeout_seconds: float, can_run_atomic_service: Any = None
    ) -> Any:
        known = super()._get_active_runners(EVER, can_run_atomic_service)  # type: ignore[misc]
        silent = self.silent_runners({r.runner_id for r in known}, timeout_seconds)
        return [r for r in known if r.runner_id not in silent]

    def _get_running_invocations_for_recovery(self, timeout_seconds: float) -> Iterator[Any]:
        runners = {}
        for invocation_id in super()._get_running_invocations_for_recovery(-EVER):  # type: ignore[misc]
            try:
                runners[invocation_id] = self._record_of(invocation_id).runner_id or ""
            except KeyError:
                continue  # purged meanwhile
        silent = self.silent_runners(set(runners.values()), timeout_seconds, adopt=True)
        return iter([i for i, runner in runners.items() if runner in silent])

    def get_pending_invocations_for_recovery(self) -> Iterator[Any]:
        return iter(self.pending_too_long(self.app.conf.max_pending_seconds))

    def _record_of(self, invocation_id: str) -> InvocationStatusRecord:
        """The invocation's status record (a backend may read it more cheaply than pynenc)."""
        return self.get_invocation_status_record(invocation_id)  # type: ignore[attr-defined]

    def admits(self, invocation: "DistributedInvocation", holder: Holder | None) -> bool:
        """Queue a new call (True) or park it (False), given its key's holder, read atomically:
        a call that waits when blocked is queued only when its key has no holder."""
        return not waits_in_line(invocation) or holder is None

    # The producer: park at registration.

    def register_new_invocations(self, invocations: list["DistributedInvocation"]) -> None:
        """pynenc's registration, with its routing replaced: a keyed call is queued only if it
        becomes its key's holder; otherwise it is parked in its line. Batches (parallelize)
        go the same way, so their keys are indexed too."""
        runner_ctx = context.get_or_create_runner_context(self.app.app_id)
        self.app.state_backend.upsert_invocations(invocations)
        record = self._register_new_invocations(invocations, runner_ctx.runner_id)  # type: ignore[attr-defined]
        ids = [invocation.invocation_id for invocation in invocations]
        self.app.state_backend.add_histories(invocations, record, runner_ctx)
        self.app.trigger.report_tasks_status(ids, record.status)
        for invocation in invocations:
            if key_arguments(invocation) is None:
                self._route(invocation.invocation_id)
                where = "ROUTED"
            else:
                where = "ROUTED" if self.admit_in_store(invocation) else "PARKED in its line"
            self.app.logger.info(f"NEW invocation:{invocation.invocation_id} REGISTERED, {where}")

    # The workers: claim.

    def get_invocations_to_run(
        self, max_num_invocations: int, runner_ctx: "RunnerContext", *args: Any, **kwargs: Any
    ) -> Iterator["DistributedInvocation"]:
        self.recover_silent_runners(runner_ctx)
        yield from super().get_invocations_to_run(  # type: ignore[misc]
            max_num_invocations, runner_ctx, *args, **kwargs
        )

    def recover_silent_runners(self, runner_ctx: "RunnerContext") -> None:
        """At most once per beat: what pynenc's recovery tasks do, each invocation in one step
        (RUNNING under a runner silent for the dead-after window, or PENDING for longer than
        max_pending_seconds: rerouted and queued again), then the keys' holders are healed.

        pynenc runs its recovery on a cron (every 15 and every 5 minutes by default), in two
        writes; a call behind a lost holder waits in its line, never claimed, meanwhile.
        """
        now = time.monotonic()
        if now < self._next_sweep:
            return
        beat = self.app.conf.atomic_service_check_interval_minutes * 60
        self._next_sweep = now + beat
        dead_after = self.app.conf.runner_considered_dead_after_minutes * 60
        max_pending = self.app.conf.max_pending_seconds
        lost = [
            *self.get_running_invocations_for_recovery(),  # type: ignore[attr-defined]
            *self.get_pending_invocations_for_recovery(),  # type: ignore[attr-defined]
        ]
        for invocation_id in lost:
            records = self.recover_in_store(
                invocation_id, runner_ctx.runner_id, dead_after, max_pending
            )
            for record in records:
                self._record(invocation_id, record, runner_ctx)
            if records:
                self.app.logger.warning(f"invocation:{invocation_id} recovered from a dead runner")
        self.heal_holders(runner_ctx)

    def heal_holders(self, runner_ctx: "RunnerContext") -> None:
        """A holder that can no longer pass its key on gets it moving again.

        - It ended without handing the key on (a process without the claim finished it).
        - It is stuck between two of pynenc's statuses (KILLED, a recovery), seen so on two
          sweeps in a row (a beat apart, on this process's own clock: no other clock is read):
          the process that was moving it died in between.
        - It waits to be claimed but is on no queue: a worker took it off the queue and died
          before claiming it. A holder on its way from the queue to its claim looks the same
          for a moment, so it is queued again only when seen so on two sweeps in a row.
        """
        ended_or_stuck, unqueued = self.holders_to_heal()
        again = [i for i in unqueued if i in self._unqueued_seen]
        stuck = {i for i in ended_or_stuck if i in self._stuck_seen}
        self._unqueued_seen, self._stuck_seen = set(unqueued), set(ended_or_stuck)
        todo = [*((i, False) for i in ended_or_stuck), *((i, True) for i in again)]
        for invocation_id, requeue in todo:
            records = self.heal_in_store(
                invocation_id, runner_ctx.runner_id, invocation_id in stuck, requeue
            )
            for record in records:
                self._record(invocation_id, record, runner_ctx)
            self.app.logger.warning(f"invocation:{invocation_id} holds its key again")

    def get_additional_invocations_to_run(
        self,
        missing_invocations: int,
        blocking_invocation_ids: set["InvocationId"],
        invocations_to_reroute: set["InvocationId"],
        runner_ctx: "RunnerContext",
        *queue_hooks: Callable,
    ) -> Iterator["DistributedInvocation"]:
        """pynenc's loop, with check-then-claim replaced by claim (queue_hooks: pynenc 0.4.0).

        A blocked call is parked, not sent round the queue again: the queue holds only calls
        that can run now. One the store could not decide goes back on the queue once the pass
        is over, never into the same pass.
        """
        retrieve = self._retriever(*queue_hooks)
        requeue: list[str] = []
        try:
            while missing_invocations > 0 and (invocation_id := retrieve()):
                if invocation_id in blocking_invocation_ids:
                    continue
                invocation = self.app.state_backend.get_invocation(invocation_id)
                verdict = self.claim(invocation, runner_ctx)
                if verdict is Verdict.RUN:
                    missing_invocations -= 1
                    yield invocation
                elif verdict is Verdict.REQUEUE:
                    requeue.append(invocation_id)
        finally:
            for invocation_id in requeue:
                self._route(invocation_id)

    def get_blocking_invocations_to_run(
        self,
        max_num_invocations: int,
        blocking_invocation_ids: set["InvocationId"],
        runner_ctx: "RunnerContext",
    ) -> Iterator["InvocationId"]:
        """Invocations others wait for (blocking control) are claimed the same way.

        This path reads them from the blocking edges, not from the queue or a line, where
        they also wait: one whose key is busy is left where it is.
        """
        for invocation_id in self.get_blocking_invocations(max_num_invocations):  # type: ignore[attr-defined]
            invocation = self.app.state_backend.get_invocation(invocation_id)
            if self.claim(invocation, runner_ctx, busy=Verdict.LEAVE) is Verdict.RUN:
                blocking_invocation_ids.add(invocation_id)
                yield invocation_id

    def claim(
        self,
        invocation: "DistributedInvocation",
        runner_ctx: "RunnerContext",
        busy: Verdict = Verdict.PARK,
    ) -> Verdict:
        """Check the key and claim in one atomic step; then record what was written."""
        dead_after = self.app.conf.runner_considered_dead_after_minutes * 60
        decision = self.claim_in_store(invocation, runner_ctx.runner_id, dead_after, busy)
        for invocation_id, record in decision.writes:
            self._record(invocation_id, record, runner_ctx)
        if decision.recovered:
            self.app.logger.warning(f"invocation:{decision.recovered} recovered from a dead runner")
        if decision.verdict is Verdict.PARK:
            self.app.logger.info(f"invocation:{invocation.invocation_id} waits in its key's line")
        if decision.token is not None:
            setattr(invocation, TOKEN_ATTRIBUTE, decision.token)
        return decision.verdict

    def decide(
        self,
        invocation: "DistributedInvocation",
        current: InvocationStatusRecord,
        holder: Holder | None,
        runner_id: str,
        alive_since: float,
        busy: Verdict = Verdict.PARK,
    ) -> Decision:
        """What to write, given the invocation's status and its key's holder, read atomically.

        holder: None when the key is free or the task has no running control.
        alive_since: on the store's clock, the oldest heartbeat of a live runner.
        busy: what a busy key means here: PARK (or drop, as the task says) or LEAVE.
        """
        if not current.status.is_available_for_run():
            return Decision(Verdict.SKIP)
        if holder is None or holder.invocation_id == invocation.invocation_id:
            new = status_record_transition(current, S.PENDING, runner_id)
            return Decision(Verdict.RUN, [(invocation.invocation_id, new)], takes_key=not holder)
        decision = Decision(busy)
        if holder.silent_since(alive_since):
            # Its runner stopped beating: recover it as pynenc's recovery does. It keeps the
            # key and is queued again: it never finished, and it came first.
            decision.writes += [
                (holder.invocation_id, r) for r in recovery(holder.record, runner_id)
            ]
            decision.recovered = holder.invocation_id
        if busy is Verdict.LEAVE:
            return decision
        if not waits_in_line(invocation) and current.status.can_transition_to(
            S.CONCURRENCY_CONTROLLED_FINAL
        ):
            dropped = status_record_transition(current, S.CONCURRENCY_CONTROLLED_FINAL, runner_id)
            decision.verdict = Verdict.DROP
            decision.writes.append((invocation.invocation_id, dropped))
        # Otherwise it waits: a rerouting task's call, and a drop pynenc forbids (a REROUTED or
        # RETRY invocation can only become PENDING) waits too, rather than going round again.
        return decision

    def is_authorize_to_run_by_concurrency_control(self, invocation: Any) -> bool:
        """pynenc checks the key again just before RUNNING (a query per call); the claim gave
        this invocation its key, and only a key's holder is ever claimed."""
        return True

    # An outcome that comes back after its claim was taken away (a stalled runner, woken after
    # its call was recovered and run again) must not be stored: pynenc stores it first, and only
    # then is refused the status.

    def _still_holds(self, invocation_id: str, runner_ctx: "RunnerContext") -> bool:
        try:
            record = self._record_of(invocation_id)
        except KeyError:  # the store lost it (a Redis emptied): nothing to store it into
            self.app.logger.warning(f"invocation:{invocation_id} is gone from the store")
            return False
        if record.status is S.RUNNING and record.runner_id == runner_ctx.runner_id:
            return True
        self.app.logger.warning(
            f"invocation:{invocation_id} outlived its claim (now {record.status.value}, "
            f"runner {record.runner_id}): its outcome is not stored"
        )
        return False

    def set_invocation_result(
        self, invocation: "DistributedInvocation", result: Any, runner_ctx: "RunnerContext"
    ) -> None:
        if self._still_holds(invocation.invocation_id, runner_ctx):
            super().set_invocation_result(invocation, result, runner_ctx)  # type: ignore[misc]

    def set_invocation_exception(
        self,
        invocation: "DistributedInvocation",
        exception: Exception,
        runner_ctx: "RunnerContext",
    ) -> None:
        if self._still_holds(invocation.invocation_id, runner_ctx):
            super().set_invocation_exception(invocation, exception, runner_ctx)  # type: ignore[misc]

    def set_invocation_retry(
        self, invocation: Any, exception: Exception, runner_ctx: "RunnerContext"
    ) -> None:
        """invocation: its id (pynenc 0.3.1), or the invocation itself (0.4.0)."""
        invocation_id = getattr(invocation, "invocation_id", invocation)
        if self._still_holds(invocation_id, runner_ctx):
            super().set_invocation_retry(invocation, exception, runner_ctx)  # type: ignore[misc]

    def _record(
        self, invocation_id: str, record: InvocationStatusRecord, runner_ctx: "RunnerContext"
    ) -> None:
        """What BaseOrchestrator.set_invocation_status does after its transition."""
        if record.status.is_final():
            self.release_waiters(invocation_id)  # type: ignore[attr-defined]
            self.set_up_invocation_auto_purge(invocation_id)  # type: ignore[attr-defined]
        self.app.state_backend.add_history(invocation_id, record, runner_ctx)
        self.app.trigger.report_tasks_status([invocation_id], record.status)
        self.app.logger.info(f"invocation:{invocation_id} status:{record.status.value}")

    def _route(self, invocation_id: str) -> None:
        """Put an invocation on its queue (pynenc 0.4.0 routes by the task's queue)."""
        if route := getattr(self, "route_invocation", None):
            route(self.app.state_backend.get_invocation(invocation_id))
        else:
            self.app.broker.route_invocation(invocation_id)

    def _retriever(self, *queue_hooks: Callable) -> Callable[[], "InvocationId | None"]:
        if not queue_hooks:
            return self.app.broker.retrieve_invocation
        queue_provider, on_queue_retrieved = queue_hooks

        def retrieve() -> "InvocationId | None":
            for queue_name in queue_provider():
                if invocation_id := self.app.broker.retrieve_invocation(queue_name):
                    on_queue_retrieved(queue_name)
                    return invocation_id
            return None

        return retrieve


class AtomicClaimSQLiteOrchestrator(AtomicClaim, SQLiteOrchestrator):
    """SQLite: every step is one BEGIN IMMEDIATE transaction (one writer at a time)."""

    BACKEND = "sqlite"

    def _init_tables(self) -> None:
        super()._init_tables()
        p = self.tables.table_prefix  # pynenc's purge clears every table under it
        self.holders, self.lines = f"{p}_key_holders", f"{p}_key_lines"
        self.fence_counters, self.claimed = f"{p}_fence_counters", f"{p}_claimed"
        self.claim_stats, self.beats = f"{p}_claim_stats", f"{p}_claim_beats"
        with closing(self._connect()) as conn, conn:
            for table, columns in (
                (self.holders, "line_key TEXT PRIMARY KEY, invocation_id TEXT NOT NULL UNIQUE"),
                (
                    self.lines,
                    "seq INTEGER PRIMARY KEY AUTOINCREMENT, line_key TEXT NOT NULL, "
                    "invocation_id TEXT NOT NULL UNIQUE",
                ),
                (self.fence_counters, "fence_key TEXT PRIMARY KEY, token INTEGER NOT NULL"),
                # Each claim: its token, and when it was made (the host's clock, in its boot).
                (
                    self.claimed,
                    "invocation_id TEXT PRIMARY KEY, token INTEGER NOT NULL, boot TEXT NOT NULL, "
                    "at REAL NOT NULL",
                ),
                (self.claim_stats, "name TEXT PRIMARY KEY, value INTEGER NOT NULL"),
                (self.beats, "runner_id TEXT PRIMARY KEY, boot TEXT NOT NULL, at REAL NOT NULL"),
            ):
                conn.execute(f"CREATE TABLE IF NOT EXISTS {table} ({columns})")
            conn.execute(
                f"CREATE INDEX IF NOT EXISTS {self.lines}_order ON {self.lines}(line_key, seq)"
            )
            queue = self.app.broker.tables.QUEUE
            columns = {row[1] for row in conn.execute(f"PRAGMA table_info({queue})").fetchall()}
        # pynenc 0.4.0's queue has a queue name and a priority per row; 0.3.1's does not.
        self._queue_by_name = "queue_name" in columns

    def _connect(self) -> sqlite3.Connection:
        """A connection for one step. pynenc's own opener sets the journal mode again on every
        connection, which waits on the database's locks; the file keeps its mode (WAL).

        pynenc builds its broker and state backend on first use, and writes as it builds them
        (0.4.0: the app's info). First used inside a step, that write would wait on the step's
        own write lock for SQLite's 30 s busy timeout: both are built before the step begins.
        """
        _ = (self.app.broker, self.app.state_backend)  # built here, outside any step
        conn = sqlite3.connect(self.sqlite_db_path, timeout=30.0, check_same_thread=False)
        conn.execute("PRAGMA synchronous=NORMAL")  # as pynenc's: WAL stays consistent
        return conn

    def _begin(self, conn: Any) -> None:
        """Take the database's write lock: every other step waits here until we commit."""
        conn.execute("BEGIN IMMEDIATE")

    def claim_in_store(
        self, invocation: "DistributedInvocation", runner_id: str, dead_after: float, busy: Verdict
    ) -> Decision:
        inv_id = invocation.invocation_id
        key = key_arguments(invocation)
        with closing(self._connect()) as conn, conn:
            self._begin(conn)
            alive_since = host_clock() - dead_after
            current = self._status(conn, inv_id)
            if current is None:
                conn.rollback()
                return Decision(Verdict.SKIP)
            line = None if key is None else line_key(invocation, key)
            holder = None if line is None else self._holder(conn, line)
            decision = self.decide(invocation, current, holder, runner_id, alive_since, busy)
            for invocation_id, record in decision.writes:
                self._write_status(conn, invocation_id, record)
            if decision.recovered:
                self._queue(conn, decision.recovered)
            if key is not None and line is not None:
                if decision.verdict is Verdict.RUN:
                    if decision.takes_key:
                        conn.execute(f"INSERT INTO {self.holders} VALUES (?, ?)", (line, inv_id))
                    self._index(conn, invocation)
                    decision.token = self._issue_token(conn, inv_id, line)
                elif decision.verdict is Verdict.PARK:
                    self._park(conn, line, inv_id)
            self._count(conn, "claims")
            self._count(conn, f"claims of {invocation.task.task_id.key}")
            conn.commit()
        return decision

    def admit_in_store(self, invocation: "DistributedInvocation") -> bool:
        key = key_arguments(invocation)
        assert key is not None
        line, inv_id = line_key(invocation, key), invocation.invocation_id
        with closing(self._connect()) as conn, conn:
            self._begin(conn)
            self._index(conn, invocation)  # before it is queued: every claimer can see it
            holder = self._holder(conn, line) if waits_in_line(invocation) else None
            queued = self.admits(invocation, holder)
            if not waits_in_line(invocation):
                self._queue(conn, inv_id)
            elif queued:
                conn.execute(f"INSERT INTO {self.holders} VALUES (?, ?)", (line, inv_id))
                self._queue(conn, inv_id)
            else:
                self._park(conn, line, inv_id)
            conn.commit()
        return queued

    def _park(self, conn: Any, line: str, invocation_id: str) -> None:
        """At the end of its key's line (once: it may already wait there)."""
        conn.execute(
            f"INSERT OR IGNORE INTO {self.lines} (line_key, invocation_id) VALUES (?, ?)",
            (line, invocation_id),
        )

    def _atomic_status_transition(
        self, invocation_id: "InvocationId", status: InvocationStatus, runner_id: str | None = None
    ) -> InvocationStatusRecord:
        """pynenc's transition (read, validate, write under BEGIN IMMEDIATE), and in the same
        transaction, on a final status: the key goes to the head of its line."""
        with closing(self._connect()) as conn, conn:
            self._begin(conn)
            current = self._status(conn, invocation_id)
            if current is None:
                raise KeyError(f"Invocation ID {invocation_id} not found")
            new = status_record_transition(current, status, runner_id)
            self._write_status(conn, invocation_id, new)
            if new.status.is_final():
                self._release(conn, invocation_id)
            conn.commit()
        return new

    def recover_in_store(
        self, invocation_id: str, runner_id: str, dead_after: float, max_pending: float
    ) -> list[InvocationStatusRecord]:
        with closing(self._connect()) as conn, conn:
            self._begin(conn)
            record = self._status(conn, invocation_id)
            lost = record is not None and self._lost(
                conn, invocation_id, record, dead_after, max_pending
            )
            if record is None or not lost:
                conn.rollback()
                return []
            records = recovery(record, runner_id)
            for each in records:
                self._write_status(conn, invocation_id, each)
            self._queue(conn, invocation_id)
            conn.commit()
        return records

    def _lost(
        self,
        conn: Any,
        invocation_id: str,
        record: InvocationStatusRecord,
        dead_after: float,
        max_pending: float,
    ) -> bool:
        """Still RUNNING under a runner silent for dead_after, or PENDING for max_pending."""
        if record.status is S.PENDING:
            return bool(self._pending_too_long(conn, max_pending, invocation_id))
        if record.status is not S.RUNNING:
            return False
        beat = self._beat(conn, record.runner_id or "")
        return beat is not None and beat < host_clock() - dead_after  # none: see Holder

    def _beat(self, conn: Any, runner_id: str) -> float | None:
        """The runner's last heartbeat on this host's clock; None if none in this boot."""
        row = conn.execute(
            f"SELECT at FROM {self.beats} WHERE runner_id = ? AND boot = ?", (runner_id, BOOT)
        ).fetchone()
        return None if row is None else float(row[0])

    def beat_in_store(self, runner_ids: list[str]) -> None:
        now = host_clock()
        with closing(self._connect()) as conn, conn:
            conn.executemany(
                f"INSERT OR REPLACE INTO {self.beats} VALUES (?, ?, ?)",
                [(runner_id, BOOT, now) for runner_id in runner_ids],
            )

    def silent_runners(self, runner_ids: set[str], window: float, adopt: bool = False) -> set[str]:
        with closing(self._connect()) as conn, conn:
            now = host_clock()
            beats = {r: self._beat(conn, r) for r in runner_ids}
            unseen = {r for r, beat in beats.items() if beat is None}
            if adopt:  # a first beat for those the store has none of (in this boot)
                conn.executemany(
                    f"INSERT INTO {self.beats} VALUES (?, ?, ?) ON CONFLICT(runner_id) DO UPDATE "
                    "SET boot = excluded.boot, at = excluded.at WHERE boot != excluded.boot",
                    [(r, BOOT, now) for r in unseen],
                )
            stale = {r for r, beat in beats.items() if beat is not None and beat < now - window}
            return stale if adopt else stale | unseen

    def pending_too_long(self, window: float) -> list[str]:
        with closing(self._connect()) as conn:
            return self._pending_too_long(conn, window)

    def _pending_too_long(self, conn: Any, window: float, only: str | None = None) -> list[str]:
        """PENDING since a claim made more than window seconds ago on this host's clock (or in
        an earlier boot); one with no claim of ours is judged by pynenc's own timestamp. only:
        this invocation alone."""
        rows = conn.execute(
            f"SELECT i.invocation_id, i.status_timestamp, c.boot, c.at "
            f"FROM {self.tables.INVOCATIONS} i LEFT JOIN {self.claimed} c "
            "ON c.invocation_id = i.invocation_id WHERE i.status = ? "
            "AND (? IS NULL OR i.invocation_id = ?)",
            (S.PENDING.value, only, only),
        ).fetchall()
        since, wall_since = host_clock() - window, time.time() - window
        return [
            invocation_id
            for invocation_id, stamp, boot, at in rows
            if (stamp < wall_since if boot is None else boot != BOOT or at < since)
        ]

    def holders_to_heal(self) -> tuple[list[str], list[str]]:
        queue = self.app.broker.tables.QUEUE
        with closing(self._connect()) as conn:
            rows = conn.execute(
                f"SELECT h.invocation_id, i.status, EXISTS (SELECT 1 FROM {queue} q "
                f"WHERE q.invocation_id = h.invocation_id) FROM {self.holders} h "
                f"LEFT JOIN {self.tables.INVOCATIONS} i ON i.invocation_id = h.invocation_id"
            ).fetchall()
        ended_or_stuck = [i for i, status, _ in rows if status is None or S(status) in UNMOVING]
        unqueued = [
            i
            for i, status, queued in rows
            if status and S(status).is_available_for_run() and not queued
        ]
        return ended_or_stuck, unqueued

    def heal_in_store(
        self, invocation_id: str, runner_id: str, stuck: bool, requeue: bool
    ) -> list[InvocationStatusRecord]:
        with closing(self._connect()) as conn, conn:
            self._begin(conn)
            holds = conn.execute(
                f"SELECT 1 FROM {self.holders} WHERE invocation_id = ?", (invocation_id,)
            ).fetchone()
            record = self._status(conn, invocation_id)
            written: list[InvocationStatusRecord] = []
            if holds is None:
                pass  # healed meanwhile
            elif record is None or record.status.is_final():
                self._release(conn, invocation_id)
            elif record.status in UNMOVING and stuck:
                written = [status_record_transition(record, S.REROUTED, runner_id)]
                self._write_status(conn, invocation_id, written[0])
                self._queue(conn, invocation_id)
            elif (
                requeue
                and record.status.is_available_for_run()
                and not self._queued(conn, invocation_id)
            ):
                self._queue(conn, invocation_id)
            conn.commit()
        return written

    def _queued(self, conn: Any, invocation_id: str) -> bool:
        queue = self.app.broker.tables.QUEUE
        found = conn.execute(f"SELECT 1 FROM {queue} WHERE invocation_id = ?", (invocation_id,))
        return found.fetchone() is not None

    def _release(self, conn: Any, invocation_id: str) -> None:
        """A final invocation lets go of its key, or of its place in a line."""
        row = conn.execute(
            f"SELECT line_key FROM {self.holders} WHERE invocation_id = ?", (invocation_id,)
        ).fetchone()
        if row is None:
            conn.execute(f"DELETE FROM {self.lines} WHERE invocation_id = ?", (invocation_id,))
            return
        head = conn.execute(
            f"SELECT seq, invocation_id FROM {self.lines} WHERE line_key = ? ORDER BY seq LIMIT 1",
            (row[0],),
        ).fetchone()
        if head is None:
            conn.execute(f"DELETE FROM {self.holders} WHERE line_key = ?", (row[0],))
            return
        conn.execute(f"DELETE FROM {self.lines} WHERE seq = ?", (head[0],))
        conn.execute(
            f"UPDATE {self.holders} SET invocation_id = ? WHERE line_key = ?", (head[1], row[0])
        )
        self._queue(conn, head[1])

    def _holder(self, conn: Any, line: str) -> Holder | None:
        """The key's holder; one that ended without letting go (a process without the claim
        finished it) hands the key on first."""
        row = conn.execute(
            f"SELECT invocation_id FROM {self.holders} WHERE line_key = ?", (line,)
        ).fetchone()
        if row is None:
            return None
        record = self._status(conn, row[0])
        if record is None or record.status.is_final():
            self._release(conn, row[0])
            return self._holder(conn, line)
        return Holder(row[0], record, self._beat(conn, record.runner_id or ""))

    def _status(self, conn: Any, invocation_id: str) -> InvocationStatusRecord | None:
        row = conn.execute(
            f"SELECT status, status_runner_id, status_timestamp FROM {self.tables.INVOCATIONS} "
            "WHERE invocation_id = ?",
            (invocation_id,),
        ).fetchone()
        if row is None:
            return None
        return InvocationStatusRecord(S(row[0]), row[1], datetime.fromtimestamp(row[2], tz=UTC))

    def _write_status(self, conn: Any, invocation_id: str, record: InvocationStatusRecord) -> None:
        conn.execute(
            f"UPDATE {self.tables.INVOCATIONS} SET status = ?, status_runner_id = ?, "
            "status_timestamp = ? WHERE invocation_id = ?",
            (record.status.value, record.runner_id, record.timestamp.timestamp(), invocation_id),
        )

    def _index(self, conn: Any, invocation: "DistributedInvocation") -> None:
        for arg, value in invocation.call.serialized_arguments.items():
            conn.execute(
                f"INSERT OR REPLACE INTO {self.tables.INVOCATION_ARGS} "
                "(invocation_id, arg_key, arg_value) VALUES (?, ?, ?)",
                (invocation.invocation_id, arg, value),
            )

    def _queue(self, conn: Any, invocation_id: str) -> None:
        """pynenc's SQLite broker's own insert, inside our transaction."""
        queue = self.app.broker.tables.QUEUE
        if self._queue_by_name:
            task = self.app.state_backend.get_invocation(invocation_id).task
            conn.execute(
                f"INSERT INTO {queue} (invocation_id, queue_name, priority, created_at) "
                "VALUES (?, ?, ?, julianday('now'))",
                (invocation_id, task.broker_queue, task.broker_priority),
            )
        else:
            conn.execute(
                f"INSERT INTO {queue} (invocation_id, created_at) VALUES (?, julianday('now'))",
                (invocation_id,),
            )

    def _issue_token(self, conn: Any, invocation_id: str, key: str) -> int:
        """The key's next fencing token, written with the claim itself, and when it was made.
        A key's first token is the time (first_token); SQLite has no clock of its own, so on
        SQLite that is this process's wall clock, used for nothing else."""
        (issued,) = conn.execute(
            f"INSERT INTO {self.fence_counters} VALUES (?, ?) "
            "ON CONFLICT(fence_key) DO UPDATE SET token = token + 1 RETURNING token",
            (key, first_token(time.time())),
        ).fetchone()
        conn.execute(
            f"INSERT OR REPLACE INTO {self.claimed} VALUES (?, ?, ?, ?)",
            (invocation_id, issued, BOOT, host_clock()),
        )
        return int(issued)

    def _count(self, conn: Any, name: str, by: int = 1) -> None:
        conn.execute(
            f"INSERT INTO {self.claim_stats} VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, by),
        )

    def _record_of(self, invocation_id: str) -> InvocationStatusRecord:
        with closing(self._connect()) as conn:
            if (record := self._status(conn, invocation_id)) is None:
                raise KeyError(f"Invocation ID {invocation_id} not found")
            return record

    def fence_token(self, invocation_id: str) -> int | None:
        with closing(self._connect()) as conn:
            row = conn.execute(
                f"SELECT token FROM {self.claimed} WHERE invocation_id = ?", (invocation_id,)
            ).fetchone()
        return None if row is None else int(row[0])

    def claim_counts(self, task: str | None = None) -> dict[str, int]:
        """Claims made so far (of one task's invocations, given its key); a SQLite claim waits
        for the write lock, so it never retries."""
        name = "claims" if task is None else f"claims of {task}"
        with closing(self._connect()) as conn:
            row = conn.execute(
                f"SELECT value FROM {self.claim_stats} WHERE name = ?", (name,)
            ).fetchone()
        return {"claims": int(row[0]) if row else 0, "retries": 0}

    def waiting(self) -> int:
        """Calls parked in a line right now, all keys together."""
        with closing(self._connect()) as conn:
            return int(conn.execute(f"SELECT COUNT(*) FROM {self.lines}").fetchone()[0])


def _seconds(redis_time: tuple[int, int]) -> float:
    """Redis TIME (seconds, microseconds) as seconds."""
    return redis_time[0] + redis_time[1] / 1_000_000


if RedisOrchestrator is not None:

    class AtomicClaimRedisOrchestrator(AtomicClaim, RedisOrchestrator):
        """Redis: every step WATCHes what it reads (the invocation's status, the key's holder
        and line, the holder's status, the key's token counter), then writes in MULTI/EXEC.

        A concurrent write to any of them fails the EXEC, and the whole read-decide-write is
        tried again on fresh data: the check and the write are one step. The tries are bounded
        and spaced out; a claim that still cannot get through goes back on the queue.
        """

        BACKEND = "redis"
        attempts = REDIS_ATTEMPTS

        def _transaction[T](
            self, step: Callable[["Pipeline"], T], *watched: str
        ) -> tuple[T | None, int]:
            """step(pipe) under WATCH, then EXEC; again on a WatchError, after a growing pause.

            step may WATCH more keys once it knows them. Returns step's value and how many
            tries failed; (None, attempts) when none got through.
            """
            for attempt in range(self.attempts):
                with self.client.pipeline() as pipe:
                    try:
                        if watched:
                            pipe.watch(*watched)
                        value = step(pipe)
                        pipe.execute()
                        return value, attempt
                    except WatchError:
                        time.sleep(self._backoff(attempt))
            return None, self.attempts

        def _backoff(self, attempt: int) -> float:
            """The pause after a failed try: it doubles with each one, up to the longest, and
            jitters, so that claimers who collided do not collide again in step."""
            first, longest = BACKOFF_SECONDS
            pause = min(longest, first * 2**attempt)
            return random.uniform(pause / 2, pause)

        def _k(self, *parts: str) -> str:
            return self.key.prefix + ":".join(parts)

        def claim_in_store(
            self,
            invocation: "DistributedInvocation",
            runner_id: str,
            dead_after: float,
            busy: Verdict,
        ) -> Decision:
            inv_id = invocation.invocation_id
            key = key_arguments(invocation)
            line = None if key is None else line_key(invocation, key)

            def step(pipe: Pipeline) -> Decision:
                current = self._read_status(pipe, inv_id)
                if current is None:
                    return Decision(Verdict.SKIP)
                holder = None if line is None else self._holder(pipe, line)
                now = _seconds(pipe.time())
                issued = None
                if key is not None:
                    counter = self._k("fence", line or "")
                    pipe.watch(counter)
                    last = pipe.get(counter)
                    issued = first_token(now) if last is None else int(last) + 1
                alive_since = now - dead_after
                decision = self.decide(invocation, current, holder, runner_id, alive_since, busy)
                pipe.multi()
                previous = {inv_id: current.status}
                if holder:
                    previous[holder.invocation_id] = holder.record.status
                for invocation_id, record in decision.writes:
                    self._write_status(pipe, invocation_id, previous[invocation_id], record)
                    previous[invocation_id] = record.status
                if decision.recovered:
                    pipe.rpush(self.app.broker.key.default_queue(), decision.recovered)
                if key is not None and line is not None:
                    if decision.verdict is Verdict.RUN:
                        if decision.takes_key:
                            pipe.set(self._k("holder", line), inv_id)
                            pipe.set(self._k("holds", inv_id), line)
                            pipe.sadd(self._k("holders"), inv_id)
                        self._index(pipe, invocation)
                        pipe.set(self._k("fence", line), issued)
                        pipe.hset(self._k("fences"), inv_id, issued)
                        pipe.hset(self._k("claimed_at"), inv_id, now)
                        decision.token = issued
                    elif decision.verdict is Verdict.PARK:
                        pipe.rpush(self._k("line", line), inv_id)
                        pipe.set(self._k("parked", inv_id), line)
                return decision

            decision, failed = self._transaction(step, self.key.invocation_to_status(inv_id))
            with self.client.pipeline(transaction=False) as pipe:
                pipe.hincrby(self._k("claim_stats"), "claims", 1)
                pipe.hincrby(self._k("claim_stats"), f"claims of {invocation.task.task_id.key}", 1)
                pipe.hincrby(self._k("claim_stats"), "retries", failed)
                pipe.execute()
            if decision is None:
                self.app.logger.warning(
                    f"invocation:{inv_id} back to the queue, unclaimed: what it watched "
                    f"changed on all {failed} tries"
                )
                return Decision(Verdict.REQUEUE)
            return decision

        def admit_in_store(self, invocation: "DistributedInvocation") -> bool:
            key = key_arguments(invocation)
            assert key is not None
            line, inv_id = line_key(invocation, key), invocation.invocation_id

            def step(pipe: Pipeline) -> bool:
                holder = self._holder(pipe, line) if waits_in_line(invocation) else None
                queued = self.admits(invocation, holder)
                pipe.multi()
                self._index(pipe, invocation)
                if queued and waits_in_line(invocation):
                    pipe.set(self._k("holder", line), inv_id)
                    pipe.set(self._k("holds", inv_id), line)
                    pipe.sadd(self._k("holders"), inv_id)
                if queued:
                    pipe.rpush(self.app.broker.key.default_queue(), inv_id)
                else:
                    pipe.rpush(self._k("line", line), inv_id)
                    pipe.set(self._k("parked", inv_id), line)
                return queued

            queued, failed = self._transaction(step)
            if queued is None:
                raise StatusContention(f"invocation:{inv_id} not admitted in {failed} tries")
            return queued

        def _atomic_status_transition(
            self, invocation_id: str, status: InvocationStatus, runner_id: str | None = None
        ) -> InvocationStatusRecord:
            """pynenc-redis 0.3.0 reads, then writes without WATCH: here the read is watched,
            and a final status hands the key on in the same MULTI."""

            def step(pipe: Pipeline) -> InvocationStatusRecord:
                current = self._read_status(pipe, invocation_id)
                if current is None:
                    raise KeyError(f"Invocation status {invocation_id} not found in Redis")
                new = status_record_transition(current, status, runner_id)
                release = self._plan_release(pipe, invocation_id) if new.status.is_final() else []
                pipe.multi()
                self._write_status(pipe, invocation_id, current.status, new)
                for write in release:
                    write(pipe)
                return new

            new, failed = self._transaction(step, self.key.invocation_to_status(invocation_id))
            if new is None:
                raise StatusContention(f"invocation:{invocation_id} changed on all {failed} tries")
            return new

        def recover_in_store(
            self, invocation_id: str, runner_id: str, dead_after: float, max_pending: float
        ) -> list[InvocationStatusRecord]:
            def step(pipe: Pipeline) -> list[InvocationStatusRecord]:
                record = self._read_status(pipe, invocation_id)
                if record is None:
                    return []
                now = _seconds(pipe.time())
                if record.status is S.PENDING:
                    claimed = pipe.hget(self._k("claimed_at"), invocation_id)
                    lost = (
                        record.timestamp.timestamp() < time.time() - max_pending
                        if claimed is None
                        else float(claimed) < now - max_pending
                    )
                else:
                    beat = pipe.hget(self._k("beats"), record.runner_id or "")
                    lost = record.status is S.RUNNING and (
                        beat is not None and float(beat) < now - dead_after  # none: see Holder
                    )
                if not lost:
                    return []
                records = recovery(record, runner_id)
                pipe.multi()
                self._write_status(pipe, invocation_id, record.status, records[0])
                self._write_status(pipe, invocation_id, records[0].status, records[1])
                pipe.rpush(self.app.broker.key.default_queue(), invocation_id)
                return records

            records, _ = self._transaction(step, self.key.invocation_to_status(invocation_id))
            return records or []

        def holders_to_heal(self) -> tuple[list[str], list[str]]:
            ids = [m.decode() for m in self.client.smembers(self._k("holders"))]
            with self.client.pipeline(transaction=False) as pipe:
                for invocation_id in ids:
                    pipe.get(self.key.invocation_to_status(invocation_id))
                    pipe.lpos(self.app.broker.key.default_queue(), invocation_id)
                found = pipe.execute()
            ended_or_stuck, unqueued = [], []
            for invocation_id, raw, position in zip(ids, found[::2], found[1::2], strict=True):
                status = InvocationStatusRecord.from_json(json.loads(raw)).status if raw else None
                if status is None or status in UNMOVING:
                    ended_or_stuck.append(invocation_id)
                elif status.is_available_for_run() and position is None:
                    unqueued.append(invocation_id)
            return ended_or_stuck, unqueued

        def heal_in_store(
            self, invocation_id: str, runner_id: str, stuck: bool, requeue: bool
        ) -> list[InvocationStatusRecord]:
            queue = self.app.broker.key.default_queue()

            def step(pipe: Pipeline) -> list[InvocationStatusRecord]:
                pipe.watch(self._k("holds", invocation_id))
                if pipe.get(self._k("holds", invocation_id)) is None:
                    return []  # healed meanwhile
                record = self._read_status(pipe, invocation_id)
                if record is None or record.status.is_final():
                    writes = self._plan_release(pipe, invocation_id)
                    pipe.multi()
                    for write in writes:
                        write(pipe)
                    return []
                if record.status in UNMOVING and stuck:
                    rerouted = status_record_transition(record, S.REROUTED, runner_id)
                    pipe.multi()
                    self._write_status(pipe, invocation_id, record.status, rerouted)
                    pipe.rpush(queue, invocation_id)
                    return [rerouted]
                available = requeue and record.status.is_available_for_run()
                if available and pipe.lpos(queue, invocation_id) is None:
                    pipe.multi()
                    pipe.rpush(queue, invocation_id)
                return []

            healed, _ = self._transaction(step, self.key.invocation_to_status(invocation_id))
            return healed or []

        def _plan_release(
            self, pipe: Pipeline, invocation_id: str
        ) -> list[Callable[[Pipeline], Any]]:
            """Read (watched) what a final invocation lets go of; return the writes to do so."""
            holds, parked = self._k("holds", invocation_id), self._k("parked", invocation_id)
            pipe.watch(holds, parked)
            if (line := pipe.get(holds)) is None:
                if (waiting_in := pipe.get(parked)) is None:
                    return []
                waiting = self._k("line", waiting_in.decode())
                return [lambda p: p.lrem(waiting, 1, invocation_id), lambda p: p.delete(parked)]
            line = line.decode()
            holder, queue = self._k("holder", line), self._k("line", line)
            pipe.watch(holder, queue)
            holders = self._k("holders")
            writes: list[Callable[[Pipeline], Any]] = [
                lambda p: p.delete(holds),
                lambda p: p.srem(holders, invocation_id),
            ]
            head = pipe.lindex(queue, 0)
            if head is None:
                return [*writes, lambda p: p.delete(holder)]
            head = head.decode()
            return [
                *writes,
                lambda p: p.lpop(queue),
                lambda p: p.delete(self._k("parked", head)),
                lambda p: p.set(holder, head),
                lambda p: p.set(self._k("holds", head), line),
                lambda p: p.sadd(holders, head),
                lambda p: p.rpush(self.app.broker.key.default_queue(), head),
            ]

        def _holder(self, pipe: Pipeline, line: str) -> Holder | None:
            """The key's holder, watched along with its status; a final one is let go first."""
            holder_key = self._k("holder", line)
            pipe.watch(holder_key, self._k("line", line))
            if (found := pipe.get(holder_key)) is None:
                return None
            holder_id = found.decode()
            pipe.watch(self.key.invocation_to_status(holder_id))
            record = self._read_status(pipe, holder_id)
            if record is None or record.status.is_final():
                # Ended without letting go: free the key here, and let the next claim see it.
                writes = self._plan_release(pipe, holder_id)  # it WATCHes: before MULTI
                pipe.multi()
                for write in writes:
                    write(pipe)
                pipe.execute()
                raise WatchError("a stale holder was released: read again")
            beat = pipe.hget(self._k("beats"), record.runner_id or "")
            return Holder(holder_id, record, float(beat) if beat else None)

        def beat_in_store(self, runner_ids: list[str]) -> None:
            if runner_ids:
                now = _seconds(self.client.time())
                self.client.hset(self._k("beats"), mapping=dict.fromkeys(runner_ids, now))

        def silent_runners(
            self, runner_ids: set[str], window: float, adopt: bool = False
        ) -> set[str]:
            ordered = sorted(runner_ids)
            if not ordered:
                return set()
            now = _seconds(self.client.time())
            beats = dict(zip(ordered, self.client.hmget(self._k("beats"), ordered), strict=True))
            unseen = {r for r, b in beats.items() if b is None}
            if adopt and unseen:
                with self.client.pipeline(transaction=False) as pipe:
                    for runner_id in unseen:
                        pipe.hsetnx(self._k("beats"), runner_id, now)  # a first beat, see above
                    pipe.execute()
            stale = {r for r, b in beats.items() if b is not None and float(b) < now - window}
            return stale if adopt else stale | unseen

        def pending_too_long(self, window: float) -> list[str]:
            pending = sorted(
                m.decode() for m in self.client.smembers(self.key.status_to_invocations(S.PENDING))
            )
            if not pending:
                return []
            since = _seconds(self.client.time()) - window
            claimed = self.client.hmget(self._k("claimed_at"), pending)
            too_long = []
            for invocation_id, at in zip(pending, claimed, strict=True):
                if at is None:  # not claimed by us: pynenc's own timestamp
                    stamp = self._record_of(invocation_id).timestamp.timestamp()
                    if stamp < time.time() - window:
                        too_long.append(invocation_id)
                elif float(at) < since:
                    too_long.append(invocation_id)
            return too_long

        def _index(self, pipe: Pipeline, invocation: "DistributedInvocation") -> None:
            task_key = invocation.task.task_id.key
            for arg, value in invocation.call.serialized_arguments.items():
                pipe.sadd(self.key.args(task_key, arg, value), invocation.invocation_id)

        def fence_token(self, invocation_id: str) -> int | None:
            issued = self.client.hget(self._k("fences"), invocation_id)
            return None if issued is None else int(issued)

        def claim_counts(self, task: str | None = None) -> dict[str, int]:
            """Claims made so far (of one task's invocations, given its key), and how many of
            their tries a WATCH conflict sent back (all tasks')."""
            raw = self.client.hgetall(self._k("claim_stats"))
            counts = {k.decode(): int(v) for k, v in raw.items()}
            claims = counts.get("claims" if task is None else f"claims of {task}", 0)
            return {"claims": claims, "retries": counts.get("retries", 0)}

        def waiting(self) -> int:
            """Calls parked in a line right now, all keys together."""
            return sum(1 for _ in self.client.scan_iter(self._k("parked", "*"), count=1000))

        def _read_status(self, pipe: Pipeline, invocation_id: str) -> InvocationStatusRecord | None:
            raw = pipe.get(self.key.invocation_to_status(invocation_id))
            return InvocationStatusRecord.from_json(json.loads(raw)) if raw else None

        def _write_status(
            self,
            pipe: Pipeline,
            invocation_id: str,
            old: InvocationStatus,
            new: InvocationStatusRecord,
        ) -> None:
            pipe.srem(self.key.status_to_invocations(old), invocation_id)
            pipe.sadd(self.key.status_to_invocations(new.status), invocation_id)
            pipe.set(self.key.invocation_to_status(invocation_id), json.dumps(new.to_json()))
