"""The demo's workers: the runner DEMO_RUNNER names, saying as it starts what it runs on.

A subclass of each, selected by class name (runner_cls) as keyclaim selects its own, does as it
starts what pynenc does not: says in one line what it runs on, so that the four-terminal way's
mismatches (database, port, claim) show at once; stores its context (pid, host) then, not with
its first call, so that demo/heartbeats.py tells a live worker from a stopped one; and joins the
fleet, or, with claim settings unlike a live worker's, says so in one line and exits 2.

Written against pynenc 0.3.1 and 0.4.0, whose runners call `_on_start` as they start (CI runs
the workers on both). Retired when pynenc stores a runner's context as it starts and offers a
hook there: the line and the fleet record would move into it.
"""

import ctypes
import sys
from typing import TYPE_CHECKING

from pynenc import PynencBuilder
from pynenc.runner import BaseRunner, MultiThreadRunner, ProcessRunner, ThreadRunner

import keyclaim
from demo import scenarios, settings
from keyclaim.runners import DrainingThreadRunner, WakeRunner

if TYPE_CHECKING:
    from pynenc import Pynenc


class Announced(BaseRunner):
    """A runner that, as it starts, stores its context, joins the fleet and says one line; and
    keeps a stop signal that came while pynenc started it (pynenc sets `running` after it
    installs its handler, so such a stop was lost, and the worker ran on until killed: a forked
    worker reaches that moment soon after sample.py starts it)."""

    stop_came = False

    def stop_runner_loop(self, signum: int | None = None, frame: object = None) -> None:
        self.stop_came = True
        super().stop_runner_loop(signum, frame)  # type: ignore[arg-type]

    def _on_start(self) -> None:
        self.app.state_backend.store_runner_context(self.runner_context)
        try:
            keyclaim.inspect.join_fleet(self.app, self.runner_id)
        except keyclaim.Refused as mixed:  # a worker beside others with other claim settings
            print(f"tasks.py: {mixed}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        backend = settings.get("DEMO_BACKEND")
        state = settings.get("REDIS_URL") if backend == "redis" else settings.get("DEMO_DB")
        claim = "on" if settings.get("DEMO_ATOMIC_CLAIM") == "1" else "off"
        libraries = ("pynenc", "keyclaim")  # the first class of theirs is what it runs
        runs = next(c for c in type(self).__mro__ if c.__module__.startswith(libraries))
        # What decides and stores: the classes that are not pynenc's (keyclaim's), by name.
        parts = (self.app.orchestrator, self.app.broker, self.app.state_backend, self.app.trigger)
        others = [type(p).__name__ for p in parts if not type(p).__module__.startswith("pynenc.")]
        deciding = ", ".join(others) or "pynenc's own classes"
        print(
            f"worker: {backend} {state}, {runs.__name__} on {deciding}, atomic claim "
            f"{claim}, calling the API at {settings.api_url()}",
            flush=True,
        )
        super()._on_start()
        self.running = self.running and not self.stop_came


class ThreadWorker(Announced, ThreadRunner):
    """The article's ThreadRunner."""


class DrainingWorker(Announced, DrainingThreadRunner):
    """With the claim: keyclaim's ThreadRunner, which drains its calls on a stop."""


class WakeWorker(Announced, WakeRunner):
    """keyclaim's wake runner: a ThreadRunner started again the moment one of its calls ends."""


class MultiThreadWorker(Announced, MultiThreadRunner):
    """pynenc's MultiThreadRunner: PROCESSES ThreadRunner processes of MAX_THREADS threads."""


class ProcessWorker(Announced, ProcessRunner):
    """pynenc's ProcessRunner: it forks one process per call, MAX_THREADS at a time."""


# DEMO_RUNNER's worker without the claim and with it, and the settings it needs. With the
# claim, keyclaim's runners drain their calls on a stop; pynenc's others hand them on, and only
# the fencing token keeps them from being applied twice at once.
WORKERS: dict[str, tuple[type[Announced], type[Announced], dict[str, object]]] = {
    "thread": (ThreadWorker, DrainingWorker, {}),
    "wake": (WakeWorker, WakeWorker, {}),
    "multi-thread": (MultiThreadWorker, MultiThreadWorker, {"max_processes": settings.PROCESSES}),
    "process": (ProcessWorker, ProcessWorker, {"min_parallel_slots": scenarios.THREADS}),
}
CLAIM_RUNNER = {"thread": "drain", "wake": "wake"}  # keyclaim.install's runner, by DEMO_RUNNER
# With the claim, a finished call's records are purged after this (keyclaim.history): long
# enough for a run's report and its monitor links; PYNENC__AUTO_FINAL_INVOCATION_PURGE_HOURS
# overrides it.
KEEP_FINISHED = 600.0


def for_claim() -> dict[str, object]:
    """keyclaim.install's runner arguments for DEMO_RUNNER, and how long it keeps finished calls."""
    runner = CLAIM_RUNNER.get(settings.get("DEMO_RUNNER"))
    return {
        "runner": runner,
        "drain_deadline": settings.drain_deadline(),
        "purge_after": KEEP_FINISHED,
    }


def select(builder: PynencBuilder, claim: bool) -> PynencBuilder:
    """DEMO_RUNNER's worker, polling every DEMO_RUNNER_SLEEP. Called after keyclaim.install,
    whose runner it derives from; with the claim on SQLite, it keeps pynenc's SQLite connections
    too, unless DEMO_SQLITE_CONNECTIONS=pynenc (docs/speed.md)."""
    name = settings.get("DEMO_RUNNER")
    sqlite = settings.get("DEMO_BACKEND") == "sqlite"
    if claim and sqlite and settings.get("DEMO_SQLITE_CONNECTIONS") == "kept":
        builder = keyclaim.keep_connections(builder)
    if name != "wake":  # the wake runner waits on its own calls instead of sleeping
        sleep = settings.seconds("DEMO_RUNNER_SLEEP")
        builder = builder.custom_config(runner_loop_sleep_time_sec=sleep)
    if name == "wake" and not claim:
        builder = keyclaim.use_runner(builder, "wake", settings.drain_deadline())
    plain, claiming, extra = WORKERS[name]
    return builder.custom_config(runner_cls=(claiming if claim else plain).__name__, **extra)


def check(app: "Pynenc") -> None:
    """Raise settings.BadSetting, in one line, when pynenc resolves a runner that is not one of
    these (PYNENC__RUNNER_CLS, [tool.pynenc]): a claim-off one would run unrefused beside claim
    workers, and sample.py would wait for its pid in vain. An unknown name pynenc refuses."""
    from pynenc.util.subclasses import get_subclass

    resolved = app.conf.runner_cls
    try:
        found = get_subclass(BaseRunner, resolved)
    except ValueError:
        return
    if not issubclass(found, Announced):
        raise settings.BadSetting(
            f"pynenc's configuration resolves runner_cls={resolved!r} (PYNENC__RUNNER_CLS or "
            "[tool.pynenc]), a runner that would not say what it runs on nor join the fleet: "
            f"remove that override and pick one with DEMO_RUNNER ({', '.join(WORKERS)})"
        )


def forked(argv: list[str]) -> None:
    """`python -m pynenc` on the app this process has loaded, in a process named as pynenc's
    command is (keyclaim's fleet check looks for the name): a worker forked by sample.py."""
    from pynenc.cli.main_cli import main

    ctypes.CDLL(None).prctl(15, b"pynenc")  # PR_SET_NAME (forked on Linux only)
    sys.argv = ["pynenc", *argv]
    main()
