"""How the demo behaves when people do what people do: Ctrl-C, a busy port, no API, no worker."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import ROOT
from demo.processes import free_port, stop_on_signals, wait_until
from demo.scenarios import Provider
from demo_runs import children_of, cmdline, process_state

DEADLINE = 60.0


class Running:
    """A demo script as a live process whose output we can watch while it runs."""

    def __init__(self, script: str, *args: str, tmp_path: Path) -> None:
        env = {**os.environ, "DEMO_LOG_DIR": str(tmp_path / "logs"), "NO_COLOR": "1"}
        argv = [sys.executable, script, "--db", str(tmp_path / "demo.db"), *args]
        self.proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for_line(self, text: str) -> None:
        def seen() -> bool:
            if self.proc.poll() is not None and text not in self.output:
                raise AssertionError(f"exited before printing {text!r}:\n{self.output}")
            return text in self.output

        wait_until(seen, DEADLINE, f"{text!r} in the output")

    def finish(self) -> int:
        try:
            code = self.proc.wait(timeout=DEADLINE)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)
        return code


@pytest.mark.e2e
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
@pytest.mark.parametrize("moment", ["starting", "mid-run"])
def test_a_signal_stops_the_demo_and_every_child(
    tmp_path: Path, sig: signal.Signals, moment: str
) -> None:
    run = Running("sample.py", "--port", str(free_port()), "--rounds", "50", tmp_path=tmp_path)
    try:
        if moment == "mid-run":
            run.wait_for_line("=== A. ")
            expected = 2  # the API and the worker
        else:
            expected = 1  # at least the API has been started
        kids = wait_until(
            lambda: (k := children_of(run.proc.pid)) and len(k) >= expected and k,
            DEADLINE,
            "sample.py's children",
        )
        run.proc.send_signal(sig)
        code = run.finish()
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
    assert code == 130, run.output
    assert "interrupted; stopping the API and the workers" in run.output
    for pid in kids:
        assert process_state(pid) in (None, "Z"), f"{cmdline(pid)} (pid {pid}) outlived sample.py"


@pytest.mark.e2e
@pytest.mark.parametrize("name, marker", [("worker 1", "runner start"), ("API", "uvicorn")])
def test_a_child_that_dies_mid_run_is_reported_at_once(
    tmp_path: Path, name: str, marker: str
) -> None:
    run = Running("sample.py", "--port", str(free_port()), "--rounds", "50", tmp_path=tmp_path)
    try:
        run.wait_for_line("=== A. ")
        kids = children_of(run.proc.pid)
        victim = next(pid for pid in kids if marker in cmdline(pid))
        os.kill(victim, signal.SIGKILL)
        code = run.finish()
    finally:
        if run.proc.poll() is None:
            run.proc.kill()
    assert code == 1, run.output
    assert f"{name} (pid {victim}) exited with code -9" in run.output
    assert "Last lines of" in run.output
    for pid in kids:
        assert process_state(pid) in (None, "Z"), f"{cmdline(pid)} outlived sample.py"


def test_a_port_held_by_another_server_is_refused_without_a_request(tmp_path: Path) -> None:
    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", 0))
        foreign.listen()
        foreign.setblocking(False)
        port = foreign.getsockname()[1]
        started = time.monotonic()
        run = Running("sample.py", "--port", str(port), tmp_path=tmp_path)
        code = run.finish()
        with pytest.raises(BlockingIOError):
            foreign.accept()  # nobody connected: the demo never talked to it
    assert code == 1, run.output
    assert f"port {port} on 127.0.0.1 is already in use" in run.output
    assert f"--port {port + 1}" in run.output
    assert time.monotonic() - started < DEADLINE
    assert not (tmp_path / "logs" / "api.log").exists()


def enqueue(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEMO_DB": str(tmp_path / "enqueue.db"), "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "enqueue.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )


def test_enqueue_with_no_api_says_where_it_looked_in_one_line(tmp_path: Path) -> None:
    port = free_port()
    result = enqueue(tmp_path, "all", "--port", str(port))
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"http://127.0.0.1:{port}" in lines[0]
    assert f"uv run uvicorn api_server:app --port {port}" in lines[0]
    assert "Traceback" not in result.stdout + result.stderr


def test_enqueue_with_no_worker_says_nobody_picked_the_work_up(
    tmp_path: Path, live_api: Provider
) -> None:
    port = live_api.base_url.rsplit(":", 1)[1]
    result = enqueue(tmp_path, "keyed", "--port", port, "--timeout", "2", "--no-chart")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "no runner picked the work up (12 invocations still registered)" in result.stdout
    assert "uv run pynenc --app tasks.app runner start" in result.stdout
    assert "GUARANTEE BROKEN: 12 invocations never finished" in result.stdout


@pytest.mark.parametrize("script", ["enqueue.py", "sample.py"])
def test_unknown_input_prints_usage_and_exits_2(script: str) -> None:
    args = ["everything"] if script == "enqueue.py" else ["--workers", "0"]
    result = subprocess.run(
        [sys.executable, script, *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("usage:"), result.stderr


def test_a_stop_signal_whose_raise_was_lost_is_raised_at_the_next_poll() -> None:
    """Python ignores an exception raised in a fork hook or a finalizer. A SIGTERM that lands
    there (as one did, just after sample.py forked a child) must still stop the run."""
    with stop_on_signals():
        with contextlib.suppress(KeyboardInterrupt):  # stands for the hook that swallows it
            signal.raise_signal(signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt, match="signal 15"):
            wait_until(lambda: False, DEADLINE, "a poll that never succeeds")
    # Once the demo is over, nothing of the signal is left behind.
    assert wait_until(lambda: True, DEADLINE, "a poll that succeeds")
