"""The four tasks carry exactly the article's concurrency options, on the article's app."""

import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
from pynenc.conf.config_task import ConcurrencyControlType as Mode
from pynenc.orchestrator.sqlite_orchestrator import SQLiteOrchestrator
from pynenc.runner import ThreadRunner
from pynenc.util.import_app import find_app_instance

import tasks
from demo import heartbeats, runners
from demo.stack import ROOT, Stack

DISABLED, KEYS = Mode.DISABLED, Mode.KEYS


@pytest.mark.parametrize(
    "name, running, registration, reroute",
    [
        ("call_unsafe", DISABLED, DISABLED, None),
        ("call_keyed", KEYS, DISABLED, True),
        ("call_keyed_drop", KEYS, DISABLED, False),
        ("refresh_once", KEYS, KEYS, True),
    ],
)
def test_task_concurrency_options(
    name: str, running: Mode, registration: Mode, reroute: bool | None
) -> None:
    conf = getattr(tasks, name).conf
    assert conf.running_concurrency == running
    assert conf.registration_concurrency == registration
    if running is KEYS:
        assert tuple(conf.key_arguments) == ("account_id",)
        assert conf.reroute_on_concurrency_control is reroute


def test_app_is_built_as_the_article_says(stack: Stack) -> None:
    """tasks.app's parts, built here, on the session stack's database: the stack starts by
    deleting it, so it starts first (in random order, built before it, they had lost their
    tables, and every test on the stack after them erred)."""
    conf = tasks.app.conf
    assert tasks.app.app_id == "concurrency_demo"
    # pynenc's own SQLite classes decide and store: the article's run is stock pynenc.
    app = tasks.app
    for part in (app.orchestrator, app.broker, app.state_backend, app.trigger):
        assert type(part).__module__.startswith("pynenc."), type(part)
    assert type(app.orchestrator) is SQLiteOrchestrator
    # pynenc's ThreadRunner, saying as it starts what it runs on (demo/runners.py)
    assert type(tasks.app.runner).__bases__ == (runners.Announced, ThreadRunner)
    assert tasks.app.runner.conf.min_threads == 1
    assert tasks.app.runner.conf.max_threads == 8
    assert conf.max_pending_seconds == 3.0


IMPORT_AS_A_WORKER = """
import sys
sys.argv = ["pynenc", "--app", "tasks.app", "runner", "start"]  # as a worker imports it
try:
    import tasks
except ValueError as refused:  # settings.BadSetting, keyclaim.Refused
    print(f"refused: {refused}")
else:
    print(f"built: {tasks.app.app_id}")
"""


@pytest.mark.parametrize("port", ["8765", "abc"])
def test_importing_tasks_builds_the_app_and_does_nothing_else(port: str, tmp_path: Path) -> None:
    """Imported as a worker imports it: no line of its own, no exit, no runner context or
    fleet record stored; a bad setting is a ValueError for the importer to word. The worker's
    line, context and fleet record come with its runner's start (demo/runners.py). Checked by
    mutation: with the earlier import-time announce back in tasks.py, the good case printed
    the worker's line and stored a context, and the bad one exited 2."""
    db = tmp_path / "import.db"
    env = {**os.environ, "DEMO_DB": str(db), "DEMO_API_PORT": port}
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_AS_A_WORKER],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    if port == "abc":
        assert (
            done.stdout == "refused: DEMO_API_PORT='abc': expected a port number from 1 to 65535\n"
        )
    else:
        assert done.stdout == "built: concurrency_demo\n", done.stdout
    assert done.stderr == ""
    assert heartbeats.in_sqlite(str(db)) == []
    if db.exists():
        with closing(sqlite3.connect(db)) as conn:
            tables = [
                n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            ]
            stored = sum(
                conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in tables
                if t.endswith(("runner_contexts", "claim_fleet"))
            )
        assert stored == 0


def test_the_monitor_finds_exactly_this_app(monkeypatch: pytest.MonkeyPatch) -> None:
    """`pynenc monitor` scans the folder's top-level files and needs exactly one app."""
    monkeypatch.chdir(ROOT)
    assert find_app_instance(None).app_id == "concurrency_demo"


KEPT = "KeptSQLiteBroker KeptSQLiteStateBackend QuietSQLiteTrigger"
STOCK = "SQLiteBroker SQLiteStateBackend SQLiteTrigger"


CLASSES = {  # (DEMO_ATOMIC_CLAIM, DEMO_SQLITE_CONNECTIONS): the classes that decide and store
    ("0", "kept"): f"SQLiteOrchestrator {STOCK}",  # stock pynenc without the claim
    ("0", "pynenc"): f"SQLiteOrchestrator {STOCK}",
    ("1", "kept"): f"AtomicClaimSQLiteOrchestrator {KEPT}",
    ("1", "pynenc"): f"AtomicClaimSQLiteOrchestrator {STOCK}",
}


def test_the_claim_and_kept_connections_are_installed_through_pynencs_configuration(
    tmp_path: Path,
) -> None:
    """DEMO_ATOMIC_CLAIM=1 selects the claiming orchestrator by its class name, and with it
    DEMO_SQLITE_CONNECTIONS pynenc's SQLite classes with kept connections or pynenc's own;
    without the claim, pynenc's own classes decide and store. Each setting in a process of its
    own, side by side."""
    probe = (
        "import tasks; a = tasks.app; "
        "print(*(type(c).__name__ for c in (a.orchestrator, a.broker, a.state_backend, a.trigger)))"
    )
    started = {}
    for n, (claim, connections) in enumerate(CLASSES):
        env = {
            **os.environ,
            "DEMO_ATOMIC_CLAIM": claim,
            "DEMO_SQLITE_CONNECTIONS": connections,
            "DEMO_DB": str(tmp_path / f"t{n}.db"),
        }
        started[claim, connections] = subprocess.Popen(
            [sys.executable, "-c", probe],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    found = {case: proc.communicate(timeout=60) for case, proc in started.items()}
    for case, (out, err) in found.items():
        assert started[case].returncode == 0, f"{case}: {err}"
        assert out.strip() == CLASSES[case], case


REFUSALS = {
    "a heartbeat too slow for the window": {
        "DEMO_DEAD_AFTER": "3",
        "DEMO_CALL_TIMEOUT": "2",
        "PYNENC__ATOMIC_SERVICE_CHECK_INTERVAL_MINUTES": "0.5",
    },
    "a window shorter than a call": {"DEMO_DEAD_AFTER": "5", "DEMO_CALL_TIMEOUT": "10"},
    "another orchestrator resolved": {"PYNENC__ORCHESTRATOR_CLS": "SQLiteOrchestrator"},
    # Not the claim's own check: without the claim, a stock runner resolved in place of the
    # demo's would join no fleet and run unrefused beside claim workers (demo/runners.check).
    # Checked by mutation: without runners.check(app) in tasks.py, this worker started.
    "a stock runner, claim off": {"DEMO_ATOMIC_CLAIM": "0", "PYNENC__RUNNER_CLS": "ThreadRunner"},
}


def test_a_worker_refuses_a_claim_its_configuration_would_make_lie(tmp_path: Path) -> None:
    """What pynenc resolves counts (its environment variables rank above the builder). The
    workers start side by side, one per override."""
    argv = [sys.executable, "-m", "pynenc", "--app", "tasks.app", "runner", "start"]
    started = {}
    for n, (case, override) in enumerate(REFUSALS.items()):
        env = {**os.environ, "DEMO_ATOMIC_CLAIM": "1", "DEMO_DB": str(tmp_path / f"{n}.db")}
        started[case] = subprocess.Popen(
            argv,
            cwd=ROOT,
            env={**env, **override},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    try:
        ended = {case: (w, *w.communicate(timeout=60)) for case, w in started.items()}
    finally:
        for worker in started.values():  # one that did not refuse runs on: stopped here
            if worker.poll() is None:
                worker.kill()
                worker.wait(60)
    for case, (worker, out, err) in ended.items():  # pynenc's one line for an app it cannot build
        assert worker.returncode == 1, f"{case}: {out}{err}"
        assert len(err.strip().splitlines()) == 1, f"{case}: {err}"
        assert err.startswith("ERROR: Failed to load application: "), f"{case}: {err}"
        assert "Traceback" not in err and "Starting runner" not in out, case
