"""The claim's own fixtures, which use nothing of the sample.

A provider, an app with its own id and database, real workers, and a private redis-server."""

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # claimapp, claimkit, provider

from claimkit import Claim, Workers, free_port, new_claim, start_redis, stop_redis
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


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A real redis-server of the test's own, on a free loopback port, saving nothing."""
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is missing in CI")
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    server = start_redis(free_port(), tmp_path)
    try:
        yield f"redis://127.0.0.1:{server.args[2]}/0"
    finally:
        stop_redis(server)
