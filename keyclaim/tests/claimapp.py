"""The claim's test app: a pynenc app on SQLite or Redis, its tasks calling tests/provider.py.

A worker runs it as a user's would: `pynenc --app claimapp.app runner start`, with the test's
database (or Redis), app id and provider in its environment (`environment`). In the test
process, each test builds an app of its own (`build`) and binds the tasks to it (`bound`).
"""

import json
import os
import sqlite3
import urllib.request
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from pynenc import PynencBuilder
from pynenc.conf.config_task import ConcurrencyControlType as Mode

import keyclaim

if TYPE_CHECKING:
    from pynenc import Pynenc

TASKS = (
    "call_unsafe",
    "call_keyed",
    "call_keyed_drop",
    "call_two",
    "call_rated",
    "call_merged",
    "call_tiered",
)


def build(
    app_id: str,
    db: str = "",
    redis_url: str = "",
    claim: bool = True,
    dead_after: float = 15.0,
    longest_call: float = 10.0,
    runner: str | None = "drain",
    keep: bool = False,
    idle: float = 0.1,
) -> "Pynenc":
    builder = PynencBuilder().app_id(app_id)
    builder = builder.redis(url=redis_url) if redis_url else builder.sqlite(db)
    builder = builder.thread_runner(min_threads=1, max_threads=4).logging_stream("stdout")
    builder = builder.runner_tuning(runner_loop_sleep_time_sec=0.05).max_pending_seconds(3.0)
    if claim:
        builder = keyclaim.install(builder, dead_after, longest_call, runner=runner, idle=idle)
    elif runner:  # the library's runner alone
        builder = keyclaim.use_runner(builder, runner)
    if keep:
        builder = keyclaim.keep_connections(builder)
    return builder.build()


def environment(app_id: str, provider_url: str, db: str = "", redis_url: str = "", **windows: str):
    """What a worker process needs in its environment to build the same app."""
    return {
        "KEYCLAIM_TEST_APP_ID": app_id,
        "KEYCLAIM_TEST_DB": db,
        "KEYCLAIM_TEST_REDIS": redis_url,
        "KEYCLAIM_TEST_PROVIDER": provider_url,
        **{f"KEYCLAIM_TEST_{name.upper()}": value for name, value in windows.items()},
    }


def blink(times: int, redis: bool) -> None:
    """The claim's holder check, as a call of this module's stores its outcome, meets a store
    that does not answer its first `times` tries (-1: every try of a call's first claim): a
    Redis read timing out, or a SQLite database locked."""
    from keyclaim.orchestrator import AtomicClaim

    if redis:
        from redis.exceptions import TimeoutError as Blink

        error = Blink("Timeout reading from socket")
    else:
        error = sqlite3.OperationalError("database is locked")
    holds, left, first = AtomicClaim._still_holds, [times], {}

    def still_holds(self: AtomicClaim, attempt: Any, *args: Any) -> bool:
        task = getattr(attempt, "task", None)  # this module's calls, not pynenc's own tasks
        if task and task.task_id.key.startswith(f"{__name__}."):
            token = getattr(attempt, "fence_token", None)
            if left[0] > 0 or (
                left[0] < 0 and first.setdefault(attempt.invocation_id, token) == token
            ):
                left[0] -= left[0] > 0
                raise error
        return holds(self, attempt, *args)

    AtomicClaim._still_holds = still_holds  # type: ignore[method-assign]


def fault_at_take(app: "Pynenc", fault: str) -> None:
    """The thread a key was handed to meets a fault as it takes its next call: a SIGKILL once
    the call is off the queue ("dequeue": before its claim) or claimed too ("take": before it
    runs), or a SIGSTOP there ("stop"); or, the first time it is off the queue, a store that
    does not answer the read of the call that follows ("blink"). Or the loop does, taking a
    call off the queue ("look": a SIGKILL before its claim)."""
    import signal
    import threading

    from keyclaim.handover import HandOver
    from keyclaim.sqlite_claim import AtomicClaimSQLiteOrchestrator as Sqlite

    taken = fault in ("take", "stop")
    owner, name = (HandOver, "take_handed") if taken else (Sqlite, "dequeue")
    looks = fault == "look"
    step, left, armed = getattr(owner, name), [fault], []

    def then_fault(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not ((found := step(self, *args, **kwargs)) and left):
            return found
        if looks:  # the loop's look (no `beside`), at a call of this module's, not pynenc's own
            task = self.app.state_backend.get_invocation(found).task.task_id.key
            hit = not args and task.startswith("claimapp.")
        else:  # the take names the call handed on (dequeue's `beside`)
            hit = bool(args)
        if hit:
            if left.pop() == "blink":
                armed.append(True)
                return found
            if fault == "stop":  # to this thread: a process's SIGSTOP stops it only once
                # another thread has taken the signal, and under load it had sent its call by then
                signal.pthread_kill(threading.get_ident(), signal.SIGSTOP)
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        return found

    read = app.state_backend.get_invocation

    def blinking(invocation_id: str) -> Any:
        if armed and armed.pop():
            raise sqlite3.OperationalError("database is locked")
        return read(invocation_id)

    setattr(owner, name, then_fault)
    app.state_backend.get_invocation = blinking  # type: ignore[method-assign]


def _from_environment() -> "Pynenc":
    env = os.environ.get
    if blinks := int(env("KEYCLAIM_TEST_BLINKS", "0")):
        blink(blinks, redis=bool(env("KEYCLAIM_TEST_REDIS")))
    app = build(
        env("KEYCLAIM_TEST_APP_ID", "keyclaim_tests"),
        env("KEYCLAIM_TEST_DB", ""),
        env("KEYCLAIM_TEST_REDIS", ""),
        claim=env("KEYCLAIM_TEST_CLAIM", "1") == "1",
        dead_after=float(env("KEYCLAIM_TEST_DEAD_AFTER", "15")),
        longest_call=float(env("KEYCLAIM_TEST_LONGEST_CALL", "10")),
        runner=None if (runner := env("KEYCLAIM_TEST_RUNNER", "drain")) == "pynenc" else runner,
        keep=env("KEYCLAIM_TEST_KEEP", "") == "1",
        idle=float(env("KEYCLAIM_TEST_IDLE", "0.1")),
    )
    if fault := env("KEYCLAIM_TEST_TAKE_FAULT"):
        fault_at_take(app, fault)
    return app


# In a worker: the app its environment names. In the test process, the test's own (bound()).
app = _from_environment() if os.environ.get("KEYCLAIM_TEST_APP_ID") else build("keyclaim_tests")
provider_url = os.environ.get("KEYCLAIM_TEST_PROVIDER", "http://127.0.0.1:9")


def _call(account_id: str, op: str) -> str:
    token = keyclaim.token(app)  # the claim's fencing token, for the provider to check
    fence = "" if token is None else f"?token={token}&slot={keyclaim.slot(app) or 0}"
    url = f"{provider_url}/call/{account_id}/{op}{fence}"
    timeout = float(os.environ.get("KEYCLAIM_TEST_LONGEST_CALL", "10"))
    with urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=timeout) as r:
        outcome = json.load(r)["outcome"]
    if outcome == "fenced":
        raise keyclaim.Fenced(f"{account_id} {op}: refused token {token}")
    return outcome


KEYED: dict[str, Any] = dict(running_concurrency=Mode.KEYS, key_arguments=("account_id",))


@app.task
def call_unsafe(account_id: str, op: str) -> str:
    return _call(account_id, op)


@app.task(**KEYED, reroute_on_concurrency_control=True)
def call_keyed(account_id: str, op: str) -> str:
    return _call(account_id, op)


@app.task(**KEYED, reroute_on_concurrency_control=False)
def call_keyed_drop(account_id: str, op: str) -> str:
    return _call(account_id, op)


@keyclaim.limit(slots=2)
@app.task(**KEYED, reroute_on_concurrency_control=True)
def call_two(account_id: str, op: str) -> str:
    return _call(account_id, op)


@keyclaim.limit(slots=2, rate=1, per=4.0)
@app.task(**KEYED, reroute_on_concurrency_control=True)
def call_rated(account_id: str, op: str) -> str:
    return _call(account_id, op)


@keyclaim.limit(merge=0.3)
@app.task(**KEYED, registration_concurrency=Mode.KEYS, reroute_on_concurrency_control=True)
def call_merged(account_id: str, op: str) -> str:
    return _call(account_id, op)


def tier(account_id: str) -> int:
    """Three calls at once for a gold account, one for the others."""
    return 3 if account_id.startswith("gold") else 1


@keyclaim.limit(rule=tier)
@app.task(**KEYED, reroute_on_concurrency_control=True)
def call_tiered(account_id: str, op: str) -> str:
    return _call(account_id, op)


def bound(test_app: "Pynenc", url: str) -> SimpleNamespace:
    """The tasks, bound to a test's own app, calling its provider (the test process runs one
    test at a time: the module's app and provider are the test's meanwhile)."""
    global app, provider_url
    app, provider_url = test_app, url
    return SimpleNamespace(**{name: test_app.get_task(globals()[name].task_id) for name in TASKS})
