"""Shared fixtures: a real API, real workers, a real Redis, and one finished run of sample.py.

The API and workers run on a private port and database; several tests read the one default
run of sample.py.

The session's settings go into the environment first: tasks.py, which the test modules
import, builds its app from them.
"""

import os
import secrets
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest
from pynenc import Pynenc
from pynenc.invocation.status import InvocationStatus

from demo import heartbeats, redis_server
from demo.processes import Child, free_port, stop_children
from demo.provider import Provider
from demo.stack import ROOT, Sample, Stack
from keyclaim.config import LONGEST_CALL_KEY
from keyclaim.sqlite_claim import AtomicClaimSQLiteOrchestrator
from tools import injections, monitor

STATE = Path(tempfile.mkdtemp(prefix="concurrency-demo-tests-"))
os.environ.update(
    {
        "DEMO_DB": str(STATE / "tests.db"),
        "DEMO_API_PORT": str(free_port()),
        "DEMO_LOG_DIR": str(STATE / "logs"),
        "DEMO_BACKEND": "sqlite",
    }
)

import tasks  # noqa: E402 - it builds its app from the settings: they come first
from helpers import FinishedRun, processes_mentioning, run_sample  # noqa: E402 - the same
from long_runs import LongRuns  # noqa: E402 - the same

READY = 30.0
# What the tests' stacks run: workers on tasks.py's app, the provider whose calls they hold.
HELD_SAMPLE = Sample("tasks.app", injections.HELD, lambda: tasks.app)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tiers: unit (a module marked so: no process, no network), e2e (a test marked so),
    integration (every other: real processes and stores, each test with its own state)."""
    for item in items:
        if not (item.get_closest_marker("unit") or item.get_closest_marker("e2e")):
            item.add_marker(pytest.mark.integration)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The session's database and logs go when every test passed; after a failure they stay."""
    if exitstatus == 0:
        shutil.rmtree(STATE, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int) -> None:
    if exitstatus != 0:
        terminalreporter.write_line(f"the workers' and the API's logs are kept in {STATE / 'logs'}")


@pytest.fixture(scope="session", autouse=True)
def long_runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LongRuns | None]:
    """test_scale.py's long sample.py runs, started as the session begins when a selected test
    reads them: they run beside the other tests instead of after them."""
    if not any("runs" in getattr(item, "fixturenames", ()) for item in request.session.items):
        yield None
        return
    started = LongRuns(tmp_path_factory.mktemp)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """The provider as a real uvicorn process on a free loopback port; no worker yet."""
    env = {"DEMO_API_PORT": os.environ["DEMO_API_PORT"], "DEMO_API_INSTANCE": secrets.token_hex(8)}
    with Stack(env, STATE / "logs", HELD_SAMPLE, ready_timeout=READY, cwd=ROOT) as running:
        running.start(workers=0)
        yield running


@pytest.fixture(scope="session")
def live_api(stack: Stack) -> Provider:
    return stack.provider


@pytest.fixture
def provider(live_api: Provider, stack: Stack) -> Iterator[Provider]:
    """The provider, reset for the test, with an empty queue: no invocation of an earlier test
    reaches this one's workers. It is never left paused."""
    live_api.reset("test", hold=0.0)
    stack.app.broker.purge()
    yield live_api
    live_api.request("POST", "/resume")
    end_leftovers(stack.app)


@pytest.fixture(autouse=True)
def no_stray_heartbeat() -> Iterator[None]:
    """Every test, whatever its fixtures: a heartbeat it left in the session's database with no
    runner context is no worker this session started, yet demo/heartbeats.py would count it as a
    live worker for 75 s, in whichever test comes next. Read without a write (heartbeats.in_sqlite),
    so a test that never touched the database leaves it untouched. Checked with a probe test
    that beat with no context and no fixture: its teardown failed here."""
    yield
    stray = [
        runner for runner in heartbeats.in_sqlite(str(STATE / "tests.db")) if runner.pid is None
    ]
    assert not stray, f"the test left heartbeats that no worker sent: {stray}"


def end_leftovers(app: Pynenc) -> None:
    """What a test left unfinished on purpose (a claim it never ran, a holder it stranded) is
    ended, so that no later test's workers recover it, claim it, or wait behind it."""
    orchestrator = app.orchestrator
    final = tuple(status.value for status in InvocationStatus.get_final_statuses())
    with closing(sqlite3.connect(orchestrator.sqlite_db_path)) as conn, conn:
        conn.execute(
            f"UPDATE {orchestrator.tables.INVOCATIONS} SET status = 'failed' "
            f"WHERE status NOT IN ({', '.join('?' for _ in final)})",
            final,
        )
        # The claim's holders and lines, once a test has made them (keyclaim).
        prefix = orchestrator.tables.table_prefix
        for table in (f"{prefix}_key_slots", f"{prefix}_key_lines", f"{prefix}_key_dues"):
            if exists(conn, table):
                conn.execute(f"DELETE FROM {table}")
    app.broker.purge()


def exists(conn: sqlite3.Connection, table: str) -> bool:
    query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
    return conn.execute(query, (table,)).fetchone() is not None


@pytest.fixture
def start_worker(stack: Stack) -> Iterator[Callable[..., Child]]:
    """Start a pynenc worker on demand, with extra environment if given; back once it has sent
    its first heartbeat. Each is stopped when the test ends."""
    started: list[Child] = []

    def start(env: dict[str, str] | None = None) -> Child:
        (worker,) = injections.add_workers(stack, 1, env)
        started.append(worker)
        return worker

    try:
        yield start
    finally:
        stack.stop(started)


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A real redis-server of the test's own, on a free loopback port."""
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is missing in CI: .ci/run should have installed it")
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    child, url = redis_server.start_private(tmp_path / "redis" / "redis.log", timeout=30)
    try:
        yield url
    finally:
        stop_children([child])


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> FinishedRun:
    """The article's run, once per session, for every test that only reads what it printed:
    its summaries, its links into the monitor, the README's picture."""
    folder = tmp_path_factory.mktemp("default-run")
    port = free_port()
    result = run_sample(folder, "--monitor-url", f"http://127.0.0.1:{port}")
    found = processes_mentioning(str(folder))
    return FinishedRun(result.stdout, result.stderr, result.returncode, folder, port, found)


@pytest.fixture(scope="session")
def live_monitor(finished_run: FinishedRun) -> Iterator[str]:
    """A real `pynenc monitor` on the finished run's database, where its links point."""
    assert finished_run.returncode == 0, finished_run.stdout + finished_run.stderr
    env = {"DEMO_DB": str(finished_run.folder / "demo.db")}
    log = finished_run.folder / "logs" / "monitor.log"
    child = monitor.start(finished_run.monitor_port, log, env, timeout=60)
    try:
        yield f"http://127.0.0.1:{finished_run.monitor_port}"
    finally:
        stop_children([child])


@pytest.fixture
def claim_app(provider: Provider, stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Provider:
    """This process registers, runs and finishes invocations through the claim, as every
    process of a deployment with the claim does: a call for a busy account parks at
    registration, and a final status hands the account on."""
    app = stack.app
    monkeypatch.setitem(app.config_values, LONGEST_CALL_KEY, 10.0)
    monkeypatch.setattr(app, "_orchestrator", AtomicClaimSQLiteOrchestrator(app))
    return provider
