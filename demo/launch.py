"""Start a stack from sample.py's flags, run a body on it, stop it on every way out.

sample.py runs the scenarios so; the tools run their rounds so (tools/stress.py). A refusal, a
child's death, a deadline and a stop signal each end the run with its own exit code.
"""

import argparse
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import keyclaim
from demo import flags, links, settings
from demo.preflight import RunRefused, preflight
from demo.processes import Child
from demo.scenarios import THREADS
from demo.signals import stop_on_signals, stop_signal
from demo.stack import FAILURES, Sample, Stack

if TYPE_CHECKING:  # imported once the children boot (Stack.start), or at the run's end
    from demo.outcome import Outcome
    from demo.show import View
    from demo.steps import Stage


def run(
    args: argparse.Namespace,
    sample: Sample,
    body: Callable[[Stack, "View"], int],
    make: Callable[..., Stack] = Stack,
    prog: str = "sample.py",
) -> int:
    """body(stack, view) on a stack started from the flags (made by `make`), stopped on every
    way out; its exit code, or the one a refusal, a failure or a stop signal ends the run with.
    Its own lines start with `prog`."""
    # A private Redis stops with this run, and with it everything the monitor would show.
    private_redis = args.backend == "redis" and not settings.get("REDIS_URL")
    env, log_dir = flags.environment(args), Path(settings.get("DEMO_LOG_DIR"))
    stack = make(
        env, log_dir, sample, ready_timeout=args.ready_timeout, private_redis=private_redis
    )
    monitor = links.monitor_program(args.monitor_url)
    command = None if private_redis else settings.command(monitor, env)
    with stop_on_signals():
        try:
            preflight(args)
            # The one place this process's settings change: its app is then built from them,
            # as the children build theirs.
            os.environ.update(env)
            with stack:
                stack.start(args.workers)
                stack.boot_cpu = cpu_seconds(stack.started)  # start_up's, and tools.bench's
                from demo.show import View

                view = View(not args.no_chart, None if args.no_links else args.monitor_url, command)
                # Its own API, owned for the whole run (it stops with it): an enqueue.py
                # pointed at it is refused instead of resetting the counts under it.
                with stack.provider.owned(prog, lease=3600):
                    code = body(stack, view)
        except (RunRefused, settings.BadSetting, keyclaim.Refused) as refused:  # or the app's
            print(f"{prog}: {refused}", file=sys.stderr)
            return getattr(refused, "code", 2)
        except KeyboardInterrupt:
            code = 130  # the first stop signal; which one it was is kept (below)
        except FAILURES as exc:
            if refusal := getattr(exc, "refusal", ""):  # a child noticed a bad setting first
                print(f"{prog}: {refusal}", file=sys.stderr)
                return 2
            print(f"{prog}: {stack.explain(exc)}", file=sys.stderr)
            code = 1
        if signum := stop_signal():
            print(f"\n{prog}: interrupted; stopping the API and the workers.", file=sys.stderr)
            return 128 + signum  # 130 for Ctrl-C, 143 for SIGTERM, as shells report them
    return code


def stage(args: argparse.Namespace, stack: Stack, runner: str) -> "Stage":
    """Where the scenarios run on this stack: its provider, the run's size with the floors
    counting every worker's threads, the deadline, and the stack's check on every poll."""
    # The threads of one worker: a MultiThreadRunner runs PROCESSES ThreadRunners.
    threads = THREADS * (settings.PROCESSES if runner == "multi-thread" else 1)
    shape = flags.shape(args, args.workers, threads)
    from demo.steps import Stage

    on = Stage(stack.provider, shape, args.timeout)
    on.check = lambda: stack.check(on.where)
    return on


def start_up(first: "Outcome", stack: Stack) -> str:
    """How long the command took to its first enqueue (`first`'s), and the CPU it took."""
    return (
        f"start-up: {first.window[0] - command_began():.2f}s from the command to the first "
        f"enqueue, {stack.boot_cpu:.2f} CPU-seconds (the command and its children, when ready)"
    )


def verdict(outcomes: list["Outcome"], stack: Stack, view: "View") -> int:
    """The verdict's lines and the monitor's, printed; the exit code."""
    from demo import report  # here, not before the children start (docs/speed.md)

    text, code = report.verdict(outcomes, stack.crashes)
    print(text)
    if ending := view.ending(outcomes):
        print(ending)
    return code


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command's name: [0] is the third field."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def command_pid() -> int:
    """The pid of this process's command: its `uv run` parent if uv started it, else its own."""
    uv = Path(f"/proc/{os.getppid()}/comm").read_text().strip() == "uv"
    return os.getppid() if uv else os.getpid()


def command_began() -> float:
    """When this process's command began (epoch seconds), from /proc (psutil's create_time
    counts from a boot time rounded to the second, up to a second off); NaN without /proc."""
    try:
        began = int(_stat(command_pid())[19]) / os.sysconf("SC_CLK_TCK")  # ticks since boot
    except OSError:
        return math.nan
    return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - began)


def cpu_seconds(children: Sequence[Child]) -> float:
    """The CPU seconds (user and system) used so far by this process's command (uv's too),
    this process and these children, steadier than the wall clock on a shared machine; NaN
    without /proc or once one has gone."""
    pids = {os.getpid(), *(child.proc.pid for child in children)}
    try:
        ticks = sum(int(f[11]) + int(f[12]) for f in map(_stat, {command_pid(), *pids}))
    except OSError:
        return math.nan
    return ticks / os.sysconf("SC_CLK_TCK")
