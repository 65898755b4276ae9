"""The faults the fault harness injects into the worker that holds a call, one function each.

A deploy's SIGTERM, a SIGKILL, a SIGSTOP, a call served past its timeout, a cut Redis link, a
skewed clock, an emptied Redis, and the run's private Redis paused or restarted; with the
workers they add (named on Redis, or skewed by faketime) and the provider's pause that keeps a
call in flight. tools/faults.py runs them.
"""

import contextlib
import glob
import os
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from demo import redis_server
from demo.processes import Child, wait_until
from demo.provider import Provider
from demo.scenarios import Scenario
from demo.stack import Stack

OPS = ("op1", "op2", "op3", "op4")
HOLD = 1.0  # how long the provider takes over a call: less than the call timeout
DEAD_AFTER, CALL_TIMEOUT = 3.0, 2.0
# How long a stalled worker, a paused provider or a cut Redis link lasts: past the window.
PAST_THE_WINDOW = DEAD_AFTER + 2.0
DEADLINE = 30.0  # for a run's invocations to end once the fault is over
# Debian's faketime package: a skewed worker's wall clock, as a host's wrong time is; never the
# kernel's own files (the claim's SQLite clock, /proc/uptime, is one of those). Its monotonic
# clock is left alone too, as a wrong time leaves it: shifted, every timed wait of Python's
# locks (sem_clockwait, which faketime does not shift) would last the skew longer, and a wake
# runner's worker 40 s ahead stopped beating (2 of its calls fenced in 5 runs).
FAKETIME_LIBRARY = next(iter(glob.glob("/usr/lib/*/faketime/libfaketime.so.1")), "libfaketime.so.1")


@dataclass
class FaultRun:
    stack: Stack
    victim: Child  # the worker holding a call that the provider is serving
    account: str  # the account of that call
    victim_name: str  # its Redis client name
    ops: list[str]  # the ops called for it, in order
    # What a fault may change: the invocations to count, and the provider's calls to skip
    # (those made before the store was emptied belong to invocations it no longer knows).
    ids: list[str] = field(default_factory=list)
    skip_calls: int = 0
    # The scenario whose task the run's calls go through; its slots are the account's calls
    # in flight at once (keyclaim.limit): its next call is the one after them.
    scenario: Scenario | None = None

    def wait(self, seconds: float, until: Callable[[], bool] = lambda: False) -> None:
        """Let `seconds` pass (the fault's length), or less once `until` holds."""
        ends = time.monotonic() + seconds
        wait_until(lambda: until() or time.monotonic() >= ends, seconds + 5, "the fault to end")

    def successor(self) -> None:
        """Until the provider sees the account's next call (its turn came, or the cut call ran
        again), past the window at most; with N slots, the one after the N in flight."""
        report = self.stack.provider.report
        slots = self.scenario.slots if self.scenario else 1
        self.wait(PAST_THE_WINDOW + 5, lambda: report()["accounts"][self.account]["calls"] > slots)


def deploy(run: FaultRun) -> None:
    """SIGTERM, and the new version starts, as a deploy does."""
    os.killpg(run.victim.proc.pid, signal.SIGTERM)
    add_worker(run.stack)


HELD = "stand_in.held:app"  # the provider, whose calls paused() holds in flight


@contextlib.contextmanager
def paused(provider: Provider, account_id: str | None = None) -> Iterator[None]:
    """Calls (or only this account's) stay in flight inside the block, however long their hold,
    and end once it is left, whatever happens (stand_in/held.py's /pause and /resume)."""
    provider.request("POST", "/pause", **({} if account_id is None else {"account_id": account_id}))
    try:
        yield
    finally:
        provider.request("POST", "/resume")


def kill(run: FaultRun) -> None:
    os.killpg(run.victim.proc.pid, signal.SIGKILL)
    run.victim.proc.wait(DEADLINE)
    add_worker(run.stack)


def kill_while_served(run: FaultRun) -> None:
    """The provider goes on serving the cut call until the account's next call arrives; the
    victim's replacement starts after that: booted under the pause, it held the next call
    past its own timeout on a loaded machine, a failure the harness made."""
    with paused(run.stack.provider, run.account):
        os.killpg(run.victim.proc.pid, signal.SIGKILL)
        run.victim.proc.wait(DEADLINE)
        run.successor()
    add_worker(run.stack)


def stall(run: FaultRun) -> None:
    os.kill(run.victim.proc.pid, signal.SIGSTOP)
    try:
        run.wait(PAST_THE_WINDOW)
    finally:
        os.kill(run.victim.proc.pid, signal.SIGCONT)


def stall_while_served(run: FaultRun) -> None:
    os.kill(run.victim.proc.pid, signal.SIGSTOP)
    try:
        with paused(run.stack.provider, run.account):
            run.successor()
    finally:
        os.kill(run.victim.proc.pid, signal.SIGCONT)


def slow_call(run: FaultRun) -> None:
    """The provider serves the call past its timeout, until the account's next call."""
    with paused(run.stack.provider, run.account):
        run.successor()


def redis_cut(run: FaultRun) -> None:
    """The victim's connections to Redis are cut, again and again, past the window."""
    import redis  # only with --backend redis, under `uv run --isolated --group redis`

    client = redis.Redis.from_url(run.stack.setting("REDIS_URL"))
    ends = time.monotonic() + PAST_THE_WINDOW

    def cut() -> bool:
        for entry in client.client_list():
            if entry.get("name") == run.victim_name:
                client.client_kill_filter(_id=entry["id"])
        return time.monotonic() >= ends

    with contextlib.closing(client):
        wait_until(cut, PAST_THE_WINDOW + 5, "the cut to last past the window")


def clocks_apart(run: FaultRun) -> None:
    """The run's two workers, one of them skewed (PAIRS), share the account's calls to the end:
    each sweeps every beat while the other holds a call. Reading its own clock, either would
    take the other, beating all along, for dead."""
    orchestrator = run.stack.app.orchestrator
    run.wait(DEADLINE, lambda: len(orchestrator.filter_final(run.ids)) == len(run.ids))


def store_emptied(run: FaultRun) -> None:
    """Redis loses every key mid-call, as a restart without persistence leaves it; the producer
    sends the account's calls again. Their tokens must be newer than the lost store's: the
    provider keeps the fence it had."""
    import redis  # only with --backend redis

    with contextlib.closing(redis.Redis.from_url(run.stack.setting("REDIS_URL"))) as client:
        client.flushall()
    run.skip_calls = len(run.stack.provider.timeline())
    run.ids = [run.scenario.task(run.account, op).invocation_id for op in run.ops]


def _redis(stack: Stack) -> Child:
    """The run's private redis-server, the one running now."""
    return next(c for c in reversed(stack.started) if c.name == "redis-server" and not c.stopped)


def redis_paused(seconds: float) -> Callable[[FaultRun], None]:
    """Redis frozen (SIGSTOP) for `seconds` while calls are in flight, then resumed: every
    worker's store reads and writes hang meanwhile, or time out."""

    def pause(run: FaultRun) -> None:
        pid = _redis(run.stack).proc.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            run.wait(seconds)
        finally:
            os.kill(pid, signal.SIGCONT)

    return pause


def redis_restarted(run: FaultRun) -> None:
    """Redis stopped while calls are in flight, down for RESTART_DOWN seconds, and started again
    on the same port without persistence: the workers' connections are refused meanwhile, and
    every invocation, context and claim it held is gone."""
    stack, old = run.stack, _redis(run.stack)
    stack.stop([old])
    run.wait(RESTART_DOWN)
    log = stack.log_dir / f"redis-{sum(c.name == 'redis-server' for c in stack.started)}.log"
    port = urlsplit(stack.setting("REDIS_URL")).port
    fresh, _ = redis_server.start_private(log, stack.ready_timeout, port=port)
    stack.started.append(fresh)


RESTART_DOWN = 2.0  # a quick restart: a supervisor's, or a failover's
PAUSES = (5, 20, 60)  # how long Redis stays paused, in seconds: past the window, and far past
FAULTS: dict[str, Callable[[FaultRun], None]] = {
    "deploy (SIGTERM mid-call)": deploy,
    "SIGKILL mid-call": kill,
    "SIGKILL mid-call, the call still served": kill_while_served,
    "SIGSTOP past the window": stall,
    "SIGSTOP past the window, the call still served": stall_while_served,
    "a call served past its timeout": slow_call,
    "Redis connection cut past the window": redis_cut,
    "one worker's clock 40 s ahead": clocks_apart,
    "one worker's clock 40 s behind": clocks_apart,
    "Redis emptied mid-call (no persistence)": store_emptied,
    **{f"Redis paused {n} s": redis_paused(n) for n in PAUSES},
    "Redis restarted (no persistence)": redis_restarted,
}
# The faults that hit the store, not a worker: on many accounts' calls, and the run counts
# its workers as they are at its end (none stopped or replaced by the harness before that).
STORE = {*(f"Redis paused {n} s" for n in PAUSES), "Redis restarted (no persistence)"}
ACCOUNTS = 20  # the store faults' accounts, each with OPS: calls in flight on every worker
# An emptied store forgets the workers too (their contexts, their beats): fresh ones next run.
EMPTIES = {"Redis emptied mid-call (no persistence)", "Redis restarted (no persistence)"}
REDIS_ONLY = {"Redis connection cut past the window", *EMPTIES, *STORE}
# The faults that stop the worker they hit on purpose (its replacement counts in its place).
STOPS = {"deploy (SIGTERM mid-call)", "SIGKILL mid-call", "SIGKILL mid-call, the call still served"}
# The skewed faults' pairs of workers: one on the host's clock, one shifted (faketime's form).
PAIRS = {"one worker's clock 40 s ahead": "+40s", "one worker's clock 40 s behind": "-40s"}
# Each worker's Redis client name, by pid: a cut must find the victim's connections.
NAMES: dict[int, str] = {}


def add_workers(stack: Stack, count: int = 1, env: dict[str, str] | None = None) -> list[Child]:
    """`count` more workers on the stack, with `env` on top of its own; back once each has sent
    its first heartbeat."""
    fresh = [stack.spawn_worker(env=env) for _ in range(count)]
    stack.wait_ready(fresh)
    return fresh


def add_worker(stack: Stack, skew: str | None = None) -> Child:
    """One more worker, named on Redis so that its connections can be told apart; its clocks
    shifted by skew, if given (libfaketime preloaded into the worker itself, so that it stays
    the process the stack started, signals and all)."""
    name = f"worker-{secrets.token_hex(3)}"
    env: dict[str, str] = {}
    if stack.setting("DEMO_BACKEND") == "redis":
        env["REDIS_URL"] = f"{stack.setting('REDIS_URL')}?client_name={name}"
    if skew:
        env |= {"LD_PRELOAD": FAKETIME_LIBRARY, "FAKETIME": skew}
        env["FAKETIME_DONT_FAKE_MONOTONIC"] = "1"  # its wall clock only (above)
    (worker,) = add_workers(stack, 1, env)
    NAMES[worker.proc.pid] = name
    return worker
