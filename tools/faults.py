"""Faults, measured: what each fault does to one call per account, with the claim on or off.

The faults: a deploy, a killed or stalled worker, a call longer than its timeout and a
dropped Redis connection.

Run it: uv run python -m tools.faults        (--runs N, --stock, --backend redis, --only NAME,
--slots)

Two workers run four calls for one account with call_keyed (the provider serves each for 1 s),
so exactly one call is in flight at a time (with --slots: call_slots, up to two at a time, and
the provider judges the account by two). Each run hits the worker that holds it, in the
middle of the call, then waits for the four invocations to end, up to a deadline, and counts
what the provider saw: collisions (two calls applied at once), double calls (one invocation's
call applied twice, one after the other), calls fenced by their token, calls answered from the
provider's store for their Idempotency-Key (replayed) and refused with 409 while the key's
first call was in flight (409), invocations that failed, invocations that ended SUCCESS though
the provider applied none of their calls (unapplied), and invocations lost (never ended). A
skewed worker runs under faketime.
The windows are short so that a run takes seconds: a silent runner is dead after 3 s, a
call times out after 2 s. docs/faults.md has the tables this printed.
"""

import argparse
import contextlib
import glob
import os
import secrets
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from demo import redis_server, settings
from demo.processes import Child, free_port, stop_on_signals, wait_until
from demo.provider import Provider
from demo.stack import FAILURES, Stack

OPS = ("op1", "op2", "op3", "op4")
HOLD = 1.0  # how long the provider takes over a call: less than the call timeout
DEAD_AFTER, CALL_TIMEOUT = 3.0, 2.0
# How long a stalled worker, a paused provider or a cut Redis link lasts: past the window.
PAST_THE_WINDOW = DEAD_AFTER + 2.0
DEADLINE = 30.0  # for a run's invocations to end once the fault is over
# Debian's faketime package: a skewed worker's wall clock, and every clock it reads but the
# kernel's own files (the claim's SQLite clock, /proc/uptime, is one of those).
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
    slots: int = 1  # the account's calls in flight at once: its next call is the one after

    def wait(self, seconds: float, until: Callable[[], bool] = lambda: False) -> None:
        """Let `seconds` pass (the fault's length), or less once `until` holds."""
        ends = time.monotonic() + seconds
        wait_until(lambda: until() or time.monotonic() >= ends, seconds + 5, "the fault to end")

    def successor(self) -> None:
        """Until the provider sees the account's next call (its turn came, or the cut call ran
        again), past the window at most; with N slots, the one after the N in flight."""
        report = self.stack.provider.report
        self.wait(
            PAST_THE_WINDOW + 5,
            lambda: report()["accounts"][self.account]["calls"] >= self.slots + 1,
        )


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

    try:
        wait_until(cut, PAST_THE_WINDOW + 5, "the cut to last past the window")
    finally:
        client.close()


def clocks_apart(run: FaultRun) -> None:
    """The run's two workers, one of them skewed (PAIRS), share the account's calls to the end:
    each sweeps every beat while the other holds a call. Reading its own clock, either would
    take the other, beating all along, for dead."""
    orchestrator = run.stack.tasks.app.orchestrator
    run.wait(DEADLINE, lambda: len(orchestrator.filter_final(run.ids)) == len(run.ids))


def store_emptied(run: FaultRun) -> None:
    """Redis loses every key mid-call, as a restart without persistence leaves it; the producer
    sends the account's calls again. Their tokens must be newer than the lost store's: the
    provider keeps the fence it had."""
    import redis  # only with --backend redis

    client = redis.Redis.from_url(run.stack.setting("REDIS_URL"))
    try:
        client.flushall()
    finally:
        client.close()
    run.skip_calls = len(run.stack.provider.timeline())
    run.ids = [run.stack.tasks.call_keyed(run.account, op).invocation_id for op in run.ops]


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
}
# An emptied store forgets the workers too (their contexts, their beats): fresh ones next run.
EMPTIES = {"Redis emptied mid-call (no persistence)"}
REDIS_ONLY = {"Redis connection cut past the window", *EMPTIES}
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
    (worker,) = add_workers(stack, 1, env)
    NAMES[worker.proc.pid] = name
    return worker


def one_run(stack: Stack, fault: str, number: int, slots: int = 1) -> Counter[str]:
    """One run of one fault; what it cost, counted. slots: call_slots's calls instead, up to
    that many in flight per account (the provider judges by as many)."""
    provider, tasks = stack.provider, stack.tasks
    quota = {"slots": slots} if slots > 1 else {}
    provider.reset(f"fault: {fault}, run {number}", HOLD, **quota)
    account = f"acme-{number}-{secrets.token_hex(2)}"  # a fresh one: runs never meet
    task = tasks.call_slots if slots > 1 else tasks.call_keyed
    ids = [task(account, op).invocation_id for op in OPS]
    victim = wait_until(lambda: _holder_mid_call(stack, ids), DEADLINE, "a call in flight")
    run = FaultRun(stack, victim, account, NAMES.get(victim.proc.pid, ""), list(OPS), ids)
    run.slots = slots
    FAULTS[fault](run)
    stack.stop([victim])  # once it has drained, been killed, or simply woken: a fresh one next
    ids = run.ids
    ends = time.monotonic() + DEADLINE
    pending = set(ids)
    while pending and time.monotonic() < ends:
        stack.check()
        pending -= set(tasks.app.orchestrator.filter_final(list(pending)))
        time.sleep(0.05)
    status = {i: tasks.app.orchestrator.get_invocation_status(i).value for i in ids}
    op_of = dict(zip(ids, OPS, strict=True))
    calls = provider.timeline()[run.skip_calls :]
    applied = Counter(c["op"] for c in calls if not (c["fenced"] or c["replayed"] or c["conflict"]))
    stack.crashes.clear()
    return Counter(
        collisions=sum(c["collided"] for c in calls),
        double=sum(1 for n in applied.values() if n > 1),
        fenced=sum(c["fenced"] for c in calls),
        replayed=sum(c["replayed"] for c in calls),
        **{"409": sum(c["conflict"] for c in calls)},
        failed=sum(s == "failed" for s in status.values()),
        unapplied=sum(s == "success" and not applied[op_of[i]] for i, s in status.items()),
        lost=len(pending),
    )


def _holder_mid_call(stack: Stack, ids: list[str]) -> Child | None:
    """The worker holding the call that the provider is serving right now."""
    if not any(c["end"] is None and not c["fenced"] for c in stack.provider.timeline()):
        return None
    for invocation_id in ids:
        record = stack.tasks.app.orchestrator.get_invocation_status_record(invocation_id)
        if record.status.value == "running" and record.runner_id is not None:
            context = stack.tasks.app.state_backend.get_runner_context(record.runner_id)
            return next((w for w in stack.workers if context and w.proc.pid == context.pid), None)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs",
        type=settings.flag_type(settings.whole_number),
        default=5,
        help="runs of each fault (default 5)",
    )
    parser.add_argument("--stock", action="store_true", help="without the claim: stock pynenc")
    parser.add_argument(
        "--backend",
        choices=("sqlite", "redis"),
        default="sqlite",
        help="where pynenc keeps its state (redis: under uv run --isolated --group redis)",
    )
    parser.add_argument(
        "--only",
        choices=list(FAULTS),
        action="append",
        metavar="FAULT",
        help="this fault only, named as in docs/faults.md's table (repeat for more): "
        + "; ".join(FAULTS),
    )
    parser.add_argument(
        "--slots",
        action="store_true",
        help=f"with the claim: call_slots, up to {settings.SLOTS} calls in flight per account",
    )
    args = parser.parse_args(argv)
    if args.slots and args.stock:
        parser.error("--slots needs the claim: stock pynenc has no N per account")
    slots = settings.SLOTS if args.slots else 1
    folder = Path(tempfile.mkdtemp(prefix="faults-"))
    env = {
        "DEMO_API_PORT": str(free_port()),
        "DEMO_API_INSTANCE": secrets.token_hex(8),
        "DEMO_BACKEND": args.backend,
        "DEMO_DB": str(folder / "faults.db"),
        "DEMO_ATOMIC_CLAIM": "0" if args.stock else "1",
        "DEMO_DEAD_AFTER": f"{DEAD_AFTER:g}",
        "DEMO_CALL_TIMEOUT": f"{CALL_TIMEOUT:g}",
        "DEMO_LOG_LEVEL": "warning",
    }
    if args.backend == "redis":
        env["REDIS_URL"] = redis_server.private_url()
    os.environ.update(env)  # this process's app, which enqueues, is built like the workers'
    faults = [f for f in args.only or FAULTS if args.backend == "redis" or f not in REDIS_ONLY]
    claim = "off (stock pynenc)" if args.stock else "on"
    print(
        f"--- {args.backend}, 2 workers, atomic claim {claim}, {slots} in flight per account; "
        "the provider serves a call "
        f"{HOLD:g}s, a call times out after {CALL_TIMEOUT:g}s, a runner silent {DEAD_AFTER:g}s "
        f"is dead; {args.runs} run(s) of each fault"
    )
    print(f"{'fault':<50}" + "".join(f"{c:>11}" for c in COLUMNS))
    redis = args.backend == "redis"
    with stop_on_signals(), Stack(env, folder / "logs", private_redis=redis, api=HELD) as s:
        try:
            s.start(workers=0)
            for fault in faults:
                total: Counter[str] = Counter()
                for number in range(1, args.runs + 1):
                    if fault in PAIRS:  # a fresh pair, one of them skewed
                        s.stop(s.workers)
                        add_worker(s, PAIRS[fault])
                    while len(s.workers) < 2:
                        add_worker(s)
                    total += one_run(s, fault, number, slots)
                    if fault in PAIRS or fault in EMPTIES:  # the next run starts afresh
                        s.stop(s.workers)
                print(f"{fault:<50}" + "".join(f"{total[c]:>11}" for c in COLUMNS), flush=True)
        except KeyboardInterrupt:
            print("\nfaults: interrupted; stopping the API and the workers", file=sys.stderr)
            return 130
        except FAILURES as exc:
            print(f"faults: {s.explain(exc)}", file=sys.stderr)
            return 1
    print(f"(logs in {folder / 'logs'})")
    return 0


COLUMNS = ("collisions", "double", "fenced", "replayed", "409", "failed", "unapplied", "lost")

if __name__ == "__main__":
    sys.exit(main())
