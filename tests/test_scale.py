"""Beyond one worker on SQLite: the Redis backend, and several workers, end to end.

The Redis runs use `uv run --isolated --group redis`, an environment of their own, so the
project's default environment stays as a user has it (without the plugin).
"""

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT
from demo import redis_server
from demo.processes import stop_children
from demo_runs import processes_mentioning, run_sample, summaries

WITH_REDIS = ("--isolated", "--group", "redis")


def redis_keys(url: str) -> int:
    host, port = url.removeprefix("redis://").split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"DBSIZE\r\n")
        return int(sock.recv(64).decode().strip().lstrip(":"))


@pytest.mark.e2e
def test_redis_backend_with_one_worker_keeps_the_key_guarantees(
    tmp_path: Path, redis_url: str
) -> None:
    result = run_sample(
        tmp_path,
        "--backend",
        "redis",
        "--no-chart",
        uv_args=WITH_REDIS,
        env={"REDIS_URL": redis_url},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    found = summaries(result.stdout)
    assert (found["B"]["calls"], found["B"]["collisions"]) == (12, 0)
    assert found["C"]["collisions"] == 0
    assert found["C"]["calls"] + found["C"]["dropped"] == 12
    assert found["D"]["collisions"] == 0
    assert redis_keys(redis_url) > 0, "the run should have kept its state in this Redis"
    assert not (tmp_path / "demo.db").exists(), "Redis runs must not touch SQLite"


@pytest.mark.e2e
def test_redis_backend_starts_and_stops_a_private_server(tmp_path: Path) -> None:
    """On the wake runner, so the same run shows that runner keeps its promises on Redis."""
    if shutil.which("redis-server") is None and not os.environ.get("CI"):
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    argv = ("--backend", "redis", "--runner", "wake", "--no-chart")
    result = run_sample(tmp_path, *argv, uv_args=WITH_REDIS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "(wake runner)" in result.stdout
    found = summaries(result.stdout)
    assert (found["B"]["calls"], found["B"]["collisions"]) == (12, 0)
    assert found["C"]["collisions"] == found["D"]["collisions"] == 0
    assert (tmp_path / "logs" / "redis.log").exists()
    assert processes_mentioning(str(tmp_path)) == []


def test_redis_backend_without_the_plugin_says_how_to_get_it(tmp_path: Path) -> None:
    result = run_sample(tmp_path, "--backend", "redis", uv_args=("--isolated",), timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "uv run --isolated --group redis python sample.py --backend redis" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.e2e
def test_several_workers_finish_with_a_report_whatever_pynenc_does(tmp_path: Path) -> None:
    """Per-key control races across runner processes in pynenc 0.3.1 (see README).

    Whether this run shows a collision, a crashed runner or nothing, it must end within
    its deadline, print the table, and exit 0 only if every guarantee held.
    """
    result = run_sample(
        tmp_path, "--workers", "3", "--rounds", "2", "--timeout", "5", "--no-chart", timeout=400
    )
    out = result.stdout
    assert result.returncode in (0, 1), out + result.stderr
    assert "=== 2 rounds: min / typical / max ===" in out, out + result.stderr
    verdict = "OK: every guarantee held" if result.returncode == 0 else "FAILED: "
    assert verdict in out, out
    assert processes_mentioning(str(tmp_path)) == []


@pytest.mark.e2e
def test_atomic_claim_keeps_every_guarantee_with_three_workers(tmp_path: Path) -> None:
    """The claim closes the race: with it, several workers must keep every promise, always."""
    result = run_sample(
        tmp_path, "--atomic-claim", "--workers", "3", "--rounds", "2", "--no-chart", timeout=400
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "--- sqlite, 3 worker(s); atomic claim on, dead after 15s" in out
    assert "totals: 0 collisions under KEYS (B 0, C 0, D 0)" in out, out
    assert "worker crashes" not in out
    assert processes_mentioning(str(tmp_path)) == []


@pytest.mark.e2e
def test_atomic_claim_on_redis_with_workers_on_separate_hosts(
    tmp_path: Path, redis_url: str
) -> None:
    result = run_sample(
        tmp_path,
        *("--backend", "redis", "--atomic-claim", "--workers", "3", "--hosts", "--no-chart"),
        uv_args=WITH_REDIS,
        env={"REDIS_URL": redis_url},
        timeout=400,
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "3 worker(s), each from its own copy of the project" in out
    hosts = sorted(p.name for p in (tmp_path / "logs" / "hosts").iterdir())
    assert hosts == ["host-1", "host-2", "host-3"]
    found = summaries(out)
    assert (found["B"]["calls"], found["B"]["collisions"]) == (12, 0)
    assert found["C"]["collisions"] == found["D"]["collisions"] == 0
    assert processes_mentioning(str(tmp_path)) == []


def test_atomic_claim_refuses_a_pynenc_it_was_not_tested_with(tmp_path: Path) -> None:
    result = run_sample(
        tmp_path,
        "--atomic-claim",
        uv_args=("--isolated", "--with", "pynenc[monitor]==0.3.0"),
        timeout=300,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == (
        "sample.py: --atomic-claim: atomic claim (sqlite): tested with pynenc 0.3.1 or "
        "pynenc 0.4.0; this environment has pynenc 0.3.0"
    ), result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "logs").exists(), "nothing may start before the refusal"


def test_the_readmes_redis_commands_leave_the_project_environment_alone() -> None:
    """pynenc imports every installed plugin at start-up: the plugin must not leak into .venv."""
    readme = (ROOT / "README.md").read_text().splitlines()
    commands = [line for line in readme if line.startswith("uv run") and "redis" in line]
    assert commands, "the README should show how to run on Redis"
    assert all(c.startswith("uv run --isolated --group redis ") for c in commands), commands

    plugin = "import pynenc_redis"
    with_group = subprocess.run(
        ["uv", "run", *WITH_REDIS, "python", "-c", plugin], cwd=ROOT, capture_output=True
    )
    assert with_group.returncode == 0, with_group.stderr
    project = subprocess.run(
        ["uv", "run", "python", "-c", plugin], cwd=ROOT, capture_output=True, text=True
    )
    assert project.returncode != 0 and "No module named 'pynenc_redis'" in project.stderr


def test_atomic_claim_refuses_a_redis_without_transactions(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None and not os.environ.get("CI"):
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    log = tmp_path / "redis" / "redis.log"
    child, url = redis_server.start_private(log, 30, extra=("--rename-command", "MULTI", ""))
    try:
        result = run_sample(
            tmp_path,
            *("--backend", "redis", "--atomic-claim"),
            uv_args=WITH_REDIS,
            env={"REDIS_URL": url},
            timeout=300,
        )
    finally:
        stop_children([child])
    assert result.returncode == 2, result.stdout + result.stderr
    # uv may report what it installed first; the demo's own word is one line.
    ours = [line for line in result.stderr.splitlines() if line.startswith("sample.py")]
    assert len(ours) == 1 and "refuses WATCH/MULTI/EXEC" in ours[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "logs" / "api.log").exists(), "no API or worker may start"
    assert processes_mentioning(str(tmp_path)) == []
