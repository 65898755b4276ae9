"""Shared fixtures: a real API and real workers on a private port and database.

The environment is set before anything imports tasks.py, which reads it to build the app.
"""

import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from demo import redis_server
from demo.processes import Child, children, free_port, start_child, stop_children, wait_until

if TYPE_CHECKING:
    from demo.scenarios import Provider

ROOT = Path(__file__).resolve().parent.parent
STATE = Path(tempfile.mkdtemp(prefix="concurrency-demo-tests-"))
os.environ.update(
    {
        "DEMO_DB": str(STATE / "tests.db"),
        "DEMO_API_PORT": str(free_port()),
        "DEMO_LOG_DIR": str(STATE / "logs"),
        "DEMO_BACKEND": "sqlite",
    }
)
READY = 30.0


def unique(prefix: str = "acct") -> str:
    """An account name no other test uses, so tests never see each other's calls."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def live_api() -> Iterator["Provider"]:
    """The provider as a real uvicorn process on a free loopback port."""
    from demo import scenarios, settings

    argv = [sys.executable, "-m", "uvicorn", "api_server:app", "--no-access-log"]
    argv += ["--host", "127.0.0.1", "--port", settings.get("DEMO_API_PORT")]
    with children() as started:
        api = start_child("API", argv, STATE / "logs" / "api.log", cwd=ROOT)
        started.append(api)
        provider = scenarios.Provider()

        def up() -> bool:
            try:
                return provider.health()["status"] == "ok"
            except scenarios.ProviderUnreachable:
                return False

        wait_until(up, READY, "the test API", check=api.check_alive)
        yield provider


@pytest.fixture
def start_worker(live_api: "Provider") -> Iterator[Callable[..., Child]]:
    """Start a pynenc worker on demand, with extra environment if given; each is stopped
    when the test ends."""
    import tasks

    started: list[Child] = []

    def start(env: dict[str, str] | None = None) -> Child:
        before = {r.runner_id for r in tasks.app.orchestrator.get_active_runners()}
        argv = [sys.executable, "-m", "pynenc", "--app", "tasks.app", "runner", "start"]
        log = STATE / "logs" / f"worker-{uuid.uuid4().hex[:6]}.log"
        worker = start_child("worker", argv, log, env=env, cwd=ROOT)
        started.append(worker)

        def registered() -> bool:
            now = {r.runner_id for r in tasks.app.orchestrator.get_active_runners()}
            return bool(now - before)

        wait_until(registered, READY, "the worker's first heartbeat", check=worker.check_alive)
        return worker

    try:
        yield start
    finally:
        stop_children(started)


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


@pytest.fixture
def claim_app(live_api: "Provider", monkeypatch: pytest.MonkeyPatch) -> Iterator["Provider"]:
    """This process registers, runs and finishes invocations through the claim, as every
    process of a deployment with the claim does: a call for a busy account parks at
    registration, and a final status hands the account on."""
    import tasks
    from demo import atomic_claim

    live_api.reset("claim test", hold=0.0)
    monkeypatch.setitem(tasks.app.config_values, atomic_claim.LONGEST_CALL_KEY, 10.0)
    orchestrator = atomic_claim.AtomicClaimSQLiteOrchestrator(tasks.app)
    monkeypatch.setattr(tasks.app, "_orchestrator", orchestrator)
    yield live_api
    live_api.http.post("/resume")
