"""The store's size after many calls, with the claim: distinct keys used once, or few keys often.

Run it: uv run python -m tools.sizes --keys 100000 --calls 100000   (--backend redis under
uv run --isolated --group redis; --batch N; --app, --scenarios: tools/given.py)

Full pynenc calls run at hundreds a second here: too slow for a million. So this drives the
app in this one process, without workers or the provider: it registers calls of the keyed
scenario's task (key i % --keys), then runs the claim's own steps on them as a ThreadRunner
would, in batches: get_invocations_to_run, RUNNING, set_invocation_result. Every row pynenc and
the claim write for a call is written (invocation, history, result, claim, token); what is not
measured: the task's body, the provider, and several workers' contention. It prints the rate
after the first 10,000 calls with a projection of the whole run, then the store's size
(tools/store_size.py) every 10 %, so a run stopped early still says how the size grew.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from pynenc.invocation.status import InvocationStatus
from pynenc.runner.runner_context import RunnerContext

from demo import flags, redis_server, settings
from demo.processes import stop_children
from tools import given, store_size

FIRST = 10_000  # the calls the rate is first measured on
BATCH_DEADLINE = 120.0  # seconds for one batch's calls to be claimed and ended


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    whole = flags.within(settings.whole_number, 1, 10**8)
    parser.add_argument("--keys", type=whole, default=1000, help="distinct keys (default 1000)")
    parser.add_argument("--calls", type=whole, default=10_000, help="calls (default 10000)")
    parser.add_argument("--batch", type=whole, default=500, help="calls registered at once")
    parser.add_argument("--backend", choices=("sqlite", "redis"), default="sqlite")
    given.add_arguments(parser)
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="sizes-"))
    env = {"DEMO_BACKEND": args.backend, "DEMO_DB": str(folder / "sizes.db")}
    env |= {"DEMO_ATOMIC_CLAIM": "1", "DEMO_LOG_LEVEL": "warning"}
    redis = None
    try:
        if args.backend == "redis":
            redis, env["REDIS_URL"] = redis_server.start_private(folder / "redis.log", 30.0)
        os.environ.update(env)
        app = given.sample(args).load_app()
        task = given.scenarios(args)["keyed"].task
        print(f"--- {args.backend}, the claim on: {args.calls:,} calls over {args.keys:,} keys")
        drive(app, task, args.keys, args.calls, args.batch)
    except (settings.BadSetting, redis_server.NoRedis, KeyError) as bad:
        print(f"tools/sizes.py: {bad}", file=sys.stderr)
        return 2
    finally:
        if redis:
            stop_children([redis])
    return 0


def drive(app, task, keys: int, calls: int, batch: int) -> None:  # type: ignore[no-untyped-def]
    """The calls in batches: registered, then claimed and ended as one runner would."""
    orchestrator, ctx = app.orchestrator, RunnerContext(runner_cls="ThreadRunner")
    started = time.monotonic()
    marks = {min(FIRST, calls), *(calls * n // 10 for n in range(1, 11))}  # every 10 %
    for first in range(0, calls, batch):
        count = min(batch, calls - first)
        pending = {task(f"k{(first + i) % keys}", "op").invocation_id for i in range(count)}
        ends = time.monotonic() + BATCH_DEADLINE
        while pending:
            orchestrator.register_runner_heartbeats([ctx.runner_id])  # a live runner
            for invocation in orchestrator.get_invocations_to_run(len(pending), ctx):
                orchestrator.set_invocation_status(
                    invocation.invocation_id, InvocationStatus.RUNNING, ctx
                )
                orchestrator.set_invocation_result(invocation, "ok", ctx)
                pending.discard(invocation.invocation_id)
            if time.monotonic() > ends:
                raise TimeoutError(f"{len(pending)} calls unclaimed after {BATCH_DEADLINE:g}s")
        done = first + count
        if any(first < m <= done for m in marks):
            seconds = time.monotonic() - started
            totals, detail = store_size.reading(app)
            rate = f"{done / seconds:7.0f}/s"
            print(f"{done:>10,} calls  {seconds:8.1f}s  {rate}  {store_size.line(totals)}")
            print("  " + " ".join(f"{k}={v}" for k, v in detail.items()), flush=True)
            if first < min(FIRST, calls) <= done:
                print(f"  the whole run at this rate: {calls * seconds / done / 60:.1f} min")


if __name__ == "__main__":
    sys.exit(main())
