"""Bad settings get one line and exit 2 before anything starts; long runs stay readable."""

import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import enqueue
import sample
from demo import flags, launch, settings
from demo.processes import Child, ChildDied, free_port
from demo.provider import Provider
from demo.stack import ROOT, Stack
from helpers import processes_mentioning, user_env
from tools import injections

BAD = [
    ("DEMO_API_PORT", "abc", "port number"),
    ("DEMO_RUNNER_SLEEP", "x", "seconds"),
    ("DEMO_TIMEOUT", "abc", "seconds"),
    ("DEMO_LOG_LEVEL", "loud", "debug, info"),
    ("DEMO_BACKEND", "mongo", "sqlite, redis"),
    ("DEMO_API_PORT", "70000", "port number"),
    ("DEMO_READY_TIMEOUT", "-1", "seconds"),
    ("DEMO_ATOMIC_CLAIM", "yes", "0, 1"),
    ("DEMO_DEAD_AFTER", "0", "seconds"),
    ("DEMO_RUNNER", "fast", "thread, wake"),
    ("DEMO_MONITOR_URL", "localhost:8000", "http://"),
    ("REDIS_URL", "localhost:6379", "redis://"),
]


def run(argv: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *argv],
        cwd=ROOT,
        env={**user_env(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def refused(code: int | str | None, stderr: str, *words: str, exit: int = 2) -> None:
    assert code == exit, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert all(word in lines[0] for word in words), lines[0]
    assert "Traceback" not in stderr


@pytest.mark.parametrize("name, value, fits", BAD, ids=[f"{n}={v}" for n, v, _ in BAD])
def test_a_bad_variable_is_one_line_and_exit_2_before_anything_starts(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    value: str,
    fits: str,
) -> None:
    monkeypatch.setenv(name, value)
    monkeypatch.setenv("DEMO_LOG_DIR", str(tmp_path / "logs"))
    with pytest.raises(SystemExit) as exited:
        sample.main(["--port", str(free_port()), "--db", str(tmp_path / "demo.db")])
    refused(exited.value.code, capsys.readouterr().err, "sample.py:", name, repr(value), fits)
    assert not (tmp_path / "logs").exists(), "nothing may start before the refusal"


def test_a_bad_variable_stops_the_command_a_user_types_in_one_line(tmp_path: Path) -> None:
    """The same refusal from `python sample.py` itself: no traceback, no process, no log."""
    db = str(tmp_path / "demo.db")
    result = run(["sample.py", "--port", str(free_port()), "--db", db], tmp_path, DEMO_TIMEOUT="x")
    refused(result.returncode, result.stderr, "sample.py:", "DEMO_TIMEOUT", "'x'", "seconds")
    assert not (tmp_path / "logs").exists(), "nothing may start before the refusal"
    assert processes_mentioning(str(tmp_path)) == []


def test_a_database_path_that_cannot_be_created_is_refused_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEMO_LOG_DIR", str(tmp_path / "logs"))
    db = str(tmp_path / "missing" / "dir" / "x.db")
    code = sample.main(["--port", str(free_port()), "--db", db])
    refused(code, capsys.readouterr().err, "--db", "DEMO_DB", "does not exist")
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize(
    "argv",
    [["enqueue.py", "all"], ["-m", "pynenc", "--app", "tasks.app", "runner", "start"]],
    ids=["enqueue.py", "worker"],
)
def test_the_enqueuer_and_a_worker_check_the_same_rules(tmp_path: Path, argv: list[str]) -> None:
    """enqueue.py says it in its own line, exit 2; a worker in pynenc's one line for an app it
    cannot build (tasks.py raised settings.BadSetting, a ValueError), exit 1."""
    result = run(argv, tmp_path, DEMO_LOG_LEVEL="loud", DEMO_DB=str(tmp_path / "x.db"))
    worker = "pynenc" in argv
    words = ("DEMO_LOG_LEVEL='loud'", "debug, info")
    refused(result.returncode, result.stderr, *words, exit=1 if worker else 2)
    first = "ERROR: Failed to load application: " if worker else "enqueue.py: "
    assert result.stderr.startswith(first), result.stderr


def test_a_flag_follows_the_same_rule_as_its_variable(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        sample.main(["--port", "abc"])
    assert exited.value.code == 2
    assert (
        "argument --port: 'abc': expected a port number from 1 to 65535" in capsys.readouterr().err
    )


def test_every_knob_has_a_default_that_fits_its_own_rule() -> None:
    parsed = {name: knob.parse(knob.default) for name, knob in settings.KNOBS.items()}
    assert parsed["DEMO_API_PORT"] == 8765 and parsed["DEMO_RUNNER_SLEEP"] == 0.1
    assert settings.problems() == []


def test_the_children_get_every_flag_as_the_variable_they_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One function turns sample.py's flags into its children's environment, and each value
    there passes its knob's own rule."""
    argv = ["--port", "8799", "--db", "x.db", "--atomic-claim", "--dead-after", "7"]
    args = sample.parse_args([*argv, "--runner", "wake"])
    env = flags.environment(args)
    assert {k: env[k] for k in ("DEMO_API_PORT", "DEMO_DB", "DEMO_ATOMIC_CLAIM")} == {
        "DEMO_API_PORT": "8799",
        "DEMO_DB": "x.db",
        "DEMO_ATOMIC_CLAIM": "1",
    }
    assert (env["DEMO_DEAD_AFTER"], env["DEMO_RUNNER"], env["DEMO_BACKEND"]) == (
        "7.0",
        "wake",
        "sqlite",
    )
    assert "REDIS_URL" not in env and len(env["DEMO_API_INSTANCE"]) == 16
    for name, value in env.items():
        if name in settings.KNOBS:
            settings.KNOBS[name].parse(value)
    monkeypatch.delenv("REDIS_URL", raising=False)  # a private Redis, then, on a port of its own
    redis = flags.environment(sample.parse_args(["--backend", "redis"]))
    assert redis["REDIS_URL"].startswith("redis://127.0.0.1:")


def in_a_terminal(argv: list[str], timeout: float = 120) -> str:
    """Run argv with a pseudo-terminal as its output, as a user's shell does; return it all."""
    env = {**os.environ, "TERM": "xterm"}
    env.pop("NO_COLOR", None)
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, *argv],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
        start_new_session=True,
    )
    os.close(follower)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([leader], [], [], 0.5)[0]:
                try:
                    data = os.read(leader, 65536)
                except OSError:  # the terminal closed: the program ended
                    break
                if not data:
                    break
                chunks.append(data)
        else:
            raise AssertionError(f"{argv} did not finish within {timeout}s")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        os.close(leader)
    assert proc.returncode == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks).decode(errors="replace")


# Two ops per account: enough for every account to collide once, and quick to run.
SCALED_A = ["enqueue.py", "unsafe", "--ops", "2", "--hold", "0.02", "--no-chart"]


@pytest.fixture(scope="module")
def worker(stack: Stack) -> Iterator[Child]:
    """One worker for the scaled runs below: they only need one to be there."""
    (started,) = injections.add_workers(stack)
    try:
        yield started
    finally:
        stack.stop([started])


@pytest.mark.slow
@pytest.mark.e2e
def test_a_scaled_run_shows_progress_on_a_terminal(provider: Provider, worker: Child) -> None:
    seen = in_a_terminal([*SCALED_A, "--accounts", "30", "--no-links"])
    assert "/60 invocations finished" in seen
    assert "\x1b[2K" in seen or "\r" in seen, "the progress line should update in place"


@pytest.mark.slow
def test_a_forty_account_summary_stays_short_and_names_who_collided(
    provider: Provider, worker: Child, capsys: pytest.CaptureFixture[str]
) -> None:
    """Piped, as here, a run shows no progress line and, under --no-links, no link."""
    assert enqueue.main([*SCALED_A[1:], "--accounts", "40", "--no-links"]) == 0
    out, err = capsys.readouterr()
    assert "invocations finished" not in out + err
    assert "\x1b[" not in out and "/invocations/timeline" not in out
    summary = out.strip().splitlines()
    assert summary[0] == "=== A. unsafe — no concurrency control ==="
    assert len(summary) <= 15, out
    assert re.search(r"^   X acct\d{3}\s+calls=2  collisions=1$", out, re.M), out
    assert "more accounts like these" in out


def test_a_worker_that_refuses_a_setting_first_gives_the_run_its_one_line(tmp_path: Path) -> None:
    """Whichever process notices a bad setting first, the run ends with that process's one
    line and exit 2. Here only the worker can notice: this test process built tasks.py
    without the claim, so the stack's own import refuses nothing. Checked by mutation: with
    Child.check_alive passing no refusal on, the run ended in "worker 1 (pid ...) exited
    with code 2" and exit 1 (sample.py's FAILURES), and this test fails."""
    env = {
        "DEMO_API_PORT": str(free_port()),
        "DEMO_DB": str(tmp_path / "demo.db"),
        "DEMO_ATOMIC_CLAIM": "1",
        "PYNENC__ORCHESTRATOR_CLS": "SQLiteOrchestrator",
    }
    stack = Stack(env, tmp_path / "logs", sample.SAMPLE, ready_timeout=60, cwd=ROOT)
    with stack, pytest.raises(ChildDied) as died:
        stack.start(workers=1)
    assert died.value.refusal.startswith("the atomic claim selects orchestrator_cls")
    assert "\n" not in died.value.refusal


def test_sample_ends_with_the_workers_one_line_when_only_the_worker_notices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """sample.py's own run, with a bad override only its worker can notice: this test process
    built tasks.py without the claim, so the run's own import refuses nothing, and the worker,
    started with the claim, refuses the override first. Checked by mutation: with launch.run's
    refusal branch removed, the run ended in "worker 1 (pid ...) exited with code 1" and exit 1,
    and this test fails."""
    monkeypatch.setenv("PYNENC__ORCHESTRATOR_CLS", "SQLiteOrchestrator")
    argv = ["--port", str(free_port()), "--db", str(tmp_path / "demo.db"), "--atomic-claim"]
    args = sample.parse_args([*argv, "--ready-timeout", "60"])
    saved = dict(os.environ)  # launch.run writes the run's settings into this process's
    try:
        code = launch.run(args, sample.SAMPLE, lambda stack, view: 0)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    err = capsys.readouterr().err
    refused(code, err, "sample.py: the atomic claim selects orchestrator_cls")
