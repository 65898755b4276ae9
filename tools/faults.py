"""Faults, measured: what each fault does to one call per account, with the claim on or off.

Run it: uv run python -m tools.faults        (--runs N, --stock, --backend redis, --only NAME,
--slots)

Two workers run four calls for one account (call_keyed; call_slots with --slots). Each run hits
the worker that holds the call the provider is serving (the Redis pauses and restart hit the
store instead, with calls for 20 accounts in flight), waits for the invocations to end, up to a
deadline, and counts what the provider saw and which workers live: docs/faults.md says what
each column counts, and has the tables this printed. The windows are short so that a run takes
seconds: a silent runner is dead after 3 s, a call times out after 2 s.
"""

import argparse
import os
import secrets
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from pynenc.invocation.status import InvocationStatus

from demo import flags, redis_server, settings
from demo.processes import Child, free_port, wait_until
from demo.scenarios import Scenario
from demo.signals import raise_if_stopping, stop_on_signals
from demo.stack import FAILURES, Stack
from tools import given
from tools.injections import (
    ACCOUNTS,
    CALL_TIMEOUT,
    DEAD_AFTER,
    DEADLINE,
    EMPTIES,
    FAULTS,
    HELD,
    HOLD,
    NAMES,
    OPS,
    PAIRS,
    REDIS_ONLY,
    STOPS,
    STORE,
    FaultRun,
    add_worker,
)


def one_run(stack: Stack, fault: str, number: int, scenario: Scenario) -> Counter[str]:
    """One run of one fault on calls of the scenario's task (B's, or F's of up to N per
    account, whose N the provider judges by); what it cost, counted."""
    provider = stack.provider
    provider.reset(f"fault: {fault}, run {number}", HOLD, **scenario.quota)
    tag = f"{number}-{secrets.token_hex(2)}"  # fresh accounts: runs never meet
    accounts = [f"acme{n}-{tag}" for n in range(ACCOUNTS if fault in STORE else 1)]
    calls_of = {scenario.task(a, op).invocation_id: (a, op) for op in OPS for a in accounts}
    ids = list(calls_of)
    victim = wait_until(lambda: _holder_mid_call(stack, ids), DEADLINE, "a call in flight")
    team = list(stack.workers)
    run = FaultRun(stack, victim, accounts[0], NAMES.get(victim.proc.pid, ""), list(OPS), ids)
    run.scenario = scenario
    FAULTS[fault](run)
    # The run's workers: those it had and those the fault started, less one it stopped on purpose.
    team += [w for w in stack.workers if w not in team]
    team = [w for w in team if not (w is victim and fault in STOPS)]
    woken = fault not in STORE and victim.proc.poll() is None  # counted as the fault left it
    if fault not in STORE:  # once it has drained, been killed, or simply woken: a fresh one next
        stack.stop([victim])
    if run.ids != ids:  # sent again (the emptied store)
        calls_of |= {i: (run.account, op) for i, op in zip(run.ids, run.ops, strict=True)}
    status = _wait_for_ends(stack, run.ids)
    calls = provider.timeline()[run.skip_calls :]
    done = [c for c in calls if not (c["fenced"] or c["replayed"] or c["conflict"])]
    applied = Counter((c["account_id"], c["op"]) for c in done)
    keys = {c["key"] for c in done}
    alive = sum(w.proc.poll() is None or (w is victim and woken) for w in team)
    stack.stop([w for w in stack.workers if w.proc.poll() is not None])  # the next run adds
    stack.crashes.clear()
    return Counter(
        collisions=sum(c["collided"] for c in calls),
        double=sum(1 for n in applied.values() if n > 1),
        fenced=sum(c["fenced"] for c in calls),
        replayed=sum(c["replayed"] for c in calls),
        **{"409": sum(c["conflict"] for c in calls)},
        failed=sum(s == "failed" for s in status.values()),
        unapplied=sum(s == "success" and not applied[calls_of[i]] for i, s in status.items()),
        lost=sum(s not in FINAL | {GONE} for s in status.values()),
        **{"failed-applied": sum(s == "failed" and i in keys for i, s in status.items())},
        **{"alive-after": alive, GONE: sum(s == GONE for s in status.values())},
    )


def _wait_for_ends(stack: Stack, ids: list[str]) -> dict[str, str]:
    """Each invocation's status once all have ended (or are gone with the store and nothing
    is in flight at the provider), or once the deadline has passed. Only the API's death
    stops it: a worker that died is counted by the run, not replaced or mourned here."""
    ends = time.monotonic() + DEADLINE
    while True:
        raise_if_stopping()
        assert stack.api is not None
        stack.api.check_alive()
        status = {i: _status(stack, i) for i in ids}
        busy = any(c["end"] is None for c in stack.provider.timeline())
        if time.monotonic() > ends or all(
            s in FINAL or (s == GONE and not busy) for s in status.values()
        ):
            return status
        time.sleep(0.1)


def _status(stack: Stack, invocation_id: str) -> str:
    try:
        return stack.app.orchestrator.get_invocation_status(invocation_id).value
    except KeyError:  # the store no longer knows it (Redis restarted)
        return GONE


def _holder_mid_call(stack: Stack, ids: list[str]) -> Child | None:
    """The worker holding the call that the provider is serving right now."""
    if not any(c["end"] is None and not c["fenced"] for c in stack.provider.timeline()):
        return None
    for invocation_id in ids:
        record = stack.app.orchestrator.get_invocation_status_record(invocation_id)
        if record.status.value == "running" and record.runner_id is not None:
            context = stack.app.state_backend.get_runner_context(record.runner_id)
            return next((w for w in stack.workers if context and w.proc.pid == context.pid), None)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    runs = flags.within(settings.whole_number, 1, 1000)
    parser.add_argument("--runs", type=runs, default=5, help="runs of each fault (default 5)")
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
        help="with the claim: F's task (slots), up to N calls in flight per account",
    )
    given.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.slots and args.stock:
        parser.error("--slots needs the claim: stock pynenc has no N per account")
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
    try:
        scenario = given.scenarios(args)["slots" if args.slots else "keyed"]
    except (settings.BadSetting, KeyError) as bad:
        print(f"tools/faults.py: {bad}", file=sys.stderr)
        return 2
    faults = [f for f in args.only or FAULTS if args.backend == "redis" or f not in REDIS_ONLY]
    claim, redis = "off (stock pynenc)" if args.stock else "on", args.backend == "redis"
    print(
        f"--- {args.backend}, 2 workers, atomic claim {claim}, {scenario.slots} in flight per "
        f"account; the provider serves a call {HOLD:g}s, a call times out after {CALL_TIMEOUT:g}s, "
        f"a runner silent {DEAD_AFTER:g}s is dead; {args.runs} run(s) of each fault"
    )
    if redis and set(faults) & STORE:
        print(f"--- the Redis pauses and restart: {ACCOUNTS} accounts x {len(OPS)} calls a run")
    print(f"{'fault':<50}" + "".join(f"{c:>{WIDTH[c]}}" for c in COLUMNS))
    sample = given.sample(args, api=HELD)
    with stop_on_signals(), Stack(env, folder / "logs", sample, private_redis=redis) as s:
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
                    total += one_run(s, fault, number, scenario)
                    if fault in PAIRS or fault in EMPTIES:  # the next run starts afresh
                        s.stop(s.workers)
                print(
                    f"{fault:<50}" + "".join(f"{total[c]:>{WIDTH[c]}}" for c in COLUMNS), flush=True
                )
        except KeyboardInterrupt:
            print("\nfaults: interrupted; stopping the API and the workers", file=sys.stderr)
            return 130
        except FAILURES as exc:
            print(f"faults: {s.explain(exc)}", file=sys.stderr)
            return 1
    print(f"(logs in {folder / 'logs'})")
    return 0


GONE = "gone"  # an invocation the store no longer knows: Redis restarted without its data
FINAL = {s.value for s in InvocationStatus.get_final_statuses()}
COLUMNS = ("collisions", "double", "fenced", "replayed", "409", "failed", "unapplied", "lost")
COLUMNS += ("failed-applied", "alive-after", GONE)
WIDTH = {c: max(11, len(c) + 3) for c in COLUMNS}  # apart, even at four digits

if __name__ == "__main__":
    sys.exit(main())
