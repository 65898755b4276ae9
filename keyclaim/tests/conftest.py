"""The claim's own fixtures, which use nothing of the sample.

A provider, an app with its own id and database, real workers, and a private redis-server."""

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # claimapp, claimkit, provider

from claimkit import WAIT, Claim, Workers, new_claim, wait_until
from provider import Judge


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tiers: unit (a module marked so: no process, no network), e2e (a test marked so),
    integration (every other: real processes and stores, each test with its own state)."""
    for item in items:
        if not (item.get_closest_marker("unit") or item.get_closest_marker("e2e")):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def provider() -> Iterator[Judge]:
    with Judge() as running:
        yield running


@pytest.fixture
def claim(tmp_path: Path, provider: Judge) -> Claim:
    """An app of the test's own on SQLite, with the claim installed."""
    return new_claim(tmp_path, provider)


@pytest.fixture
def workers(claim: Claim, tmp_path: Path) -> Iterator[Workers]:
    started = Workers(claim, tmp_path)
    try:
        yield started
    finally:
        started.stop_all()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A real redis-server of the test's own, on a free loopback port, saving nothing."""
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is missing in CI")
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--dir", str(tmp_path)]
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, start_new_session=True)
    try:

        def answers() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        wait_until(answers, WAIT, "redis-server to answer")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        try:
            server.wait(WAIT)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(WAIT)
