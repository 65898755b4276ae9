"""How the demo behaves when people do what people do: Ctrl-C, a busy port, no API, no worker."""

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import IO

import psutil
import pytest
from pynenc import PynencBuilder
from pynenc.invocation.status import InvocationStatus
from pynenc.runner.runner_context import RunnerContext

import enqueue
import sample
import tasks
from demo import checks, heartbeats
from demo.processes import Child, free_port, start_child, stop_children, wait_until
from demo.provider import Provider
from demo.signals import held_signals, stop_on_signals, stop_signal
from demo.stack import ROOT, Sample, Stack
from helpers import children_of, cmdline, paused, process_state, unique, user_env, wait_final
from tools import stress

DEADLINE = 60.0


class Running:
    """A demo command as a live process whose output we can watch while it runs.

    new_session: in a process group of its own, as a terminal starts a command, so a test can
    signal the whole group as Ctrl-C does.
    """

    def __init__(self, argv: list[str], tmp_path: Path, new_session: bool = False) -> None:
        self.new_session = new_session
        self.proc = subprocess.Popen(
            [*argv, "--db", str(tmp_path / "demo.db")],
            cwd=ROOT,
            env=user_env(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=new_session,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: IO[str], into: list[str]) -> None:
        for line in stream:
            into.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    @property
    def output(self) -> str:
        return "".join(self.out) + self.stderr

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
            self.kill()
        for reader in self._readers:
            reader.join(timeout=5)
        return code

    def kill(self) -> None:
        """Whatever happened, nothing of it is left running: its group, if it has one of its
        own (the demo's children follow it: they are told to stop when it dies)."""
        if self.proc.poll() is None:
            if self.new_session:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.kill()
            self.proc.wait()


def sample_py(*args: str) -> list[str]:
    return [sys.executable, "sample.py", "--port", str(free_port()), *args]


def worker_line(worker: Child) -> str:
    """The line a worker says what it runs on with, as its runner starts (demo/runners.py)."""
    said = [line for line in worker.log_path.read_text().splitlines() if line.startswith("worker:")]
    assert len(said) == 1, worker.tail()
    return said[0]


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize(
    "sig, code, moment",
    [
        (signal.SIGTERM, 143, "starting"),
        (signal.SIGTERM, 143, "mid-run"),
        (signal.SIGINT, 130, "starting"),
        # Ctrl-C mid-run: test_ctrl_c_twice_to_the_process_group_stops_cleanly, as a terminal.
    ],
    ids=["starting-SIGTERM", "mid-run-SIGTERM", "starting-Ctrl-C"],
)
def test_a_signal_stops_the_demo_and_every_child(
    tmp_path: Path, sig: signal.Signals, code: int, moment: str
) -> None:
    """Exit 128 + the signal's number, as a shell reports a command it stopped: 130 for
    Ctrl-C, 143 for SIGTERM."""
    run = Running(sample_py("--hold", "2"), tmp_path)
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
        assert run.finish() == code, run.output
    finally:
        run.kill()
    assert "interrupted; stopping the API and the workers" in run.output
    for pid in kids:
        assert process_state(pid) in (None, "Z"), f"{cmdline(pid)} (pid {pid}) outlived sample.py"


@pytest.mark.slow
@pytest.mark.e2e
def test_ctrl_c_twice_to_the_process_group_stops_cleanly(tmp_path: Path) -> None:
    """Ctrl-C in a terminal signals the command's whole process group: `uv run` and the demo,
    and uv forwards it to the demo once more. Pressed twice in a row, and once more while the
    demo stops its children (its API already gone), it must stop every child, say so in one
    line, exit 130, and show no traceback.

    Checked against mutations, each reverted: a raise inside stop_children (fails every time),
    and the design before this test (every signal raises, teardown outside the try: it
    failed every time here, as soon as the last Ctrl-C lands in the teardown).
    """
    argv = ["uv", "run", "python", "sample.py", "--port", str(free_port()), "--hold", "2"]
    run = Running(argv, tmp_path, new_session=True)
    try:
        run.wait_for_line("=== A. ")
        tree = psutil.Process(run.proc.pid).children(recursive=True)
        assert len(tree) >= 3, tree  # sample.py, the API and the worker, under uv
        (api,) = [p for p in tree if "uvicorn" in " ".join(p.cmdline())]
        os.killpg(run.proc.pid, signal.SIGINT)
        os.killpg(run.proc.pid, signal.SIGINT)
        wait_until(lambda: not running(api), DEADLINE, "the API to stop")
        with contextlib.suppress(ProcessLookupError):  # unless the demo has stopped already
            os.killpg(run.proc.pid, signal.SIGINT)
        assert run.finish() == 130, run.output
    finally:
        run.kill()
    assert "Traceback" not in run.output
    lines = run.stderr.strip().splitlines()
    assert lines == ["sample.py: interrupted; stopping the API and the workers."], run.stderr
    gone, alive = psutil.wait_procs(tree, timeout=DEADLINE)
    assert alive == [], [" ".join(p.cmdline()) for p in alive]


def running(proc: psutil.Process) -> bool:
    """Alive and not a zombie waiting for its parent to reap it."""
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
@pytest.mark.e2e
# The worker forks from sample.py and names itself pynenc (demo/runners.py forked).
@pytest.mark.parametrize("name, marker", [("worker 1", "pynenc"), ("API", "uvicorn")])
def test_a_child_that_dies_mid_run_is_reported_at_once(
    tmp_path: Path, name: str, marker: str
) -> None:
    run = Running(sample_py("--hold", "2"), tmp_path)
    try:
        run.wait_for_line("=== A. ")
        kids = children_of(run.proc.pid)
        victim = next(
            pid for pid in kids if marker in f"{psutil.Process(pid).name()} {cmdline(pid)}"
        )
        os.kill(victim, signal.SIGKILL)
        code = run.finish()
    finally:
        run.kill()
    assert code == 1, run.output
    assert f"{name} (pid {victim}) exited with code -9" in run.output
    assert "Last lines of" in run.output
    for pid in kids:
        assert process_state(pid) in (None, "Z"), f"{cmdline(pid)} outlived sample.py"


def test_a_port_held_by_another_server_is_refused_without_a_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEMO_LOG_DIR", str(tmp_path / "logs"))
    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", 0))
        foreign.listen()
        foreign.setblocking(False)
        port = foreign.getsockname()[1]
        code = sample.main(["--port", str(port), "--db", str(tmp_path / "demo.db")])
        with pytest.raises(BlockingIOError):
            foreign.accept()  # nobody connected: the demo never talked to it
    err = capsys.readouterr().err
    assert code == 1, err
    assert f"port {port} on 127.0.0.1 is already in use" in err
    assert f"--port {port + 1}" in err
    assert not (tmp_path / "logs" / "api.log").exists()


def test_enqueue_with_no_api_says_where_it_looked_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    port = free_port()
    assert enqueue.main(["all", "--port", str(port)]) == 1
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert f"http://127.0.0.1:{port}" in lines[0]
    assert f"uv run uvicorn api_server:app --port {port}" in lines[0]
    assert f"start the workers with DEMO_API_PORT={port} so they call it too" in lines[0]
    assert "Traceback" not in out + err


def test_enqueue_asked_for_the_claim_by_flag_says_where_it_is_set(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DEMO_ATOMIC_CLAIM", raising=False)
    with pytest.raises(SystemExit) as refused:
        enqueue.main(["all", "--atomic-claim"])
    assert refused.value.code == 2
    assert "set DEMO_ATOMIC_CLAIM=1 in this terminal and the workers'" in capsys.readouterr().err


@pytest.mark.e2e
def test_enqueue_with_no_worker_says_so_at_once_and_enqueues_nothing(
    tmp_path: Path, live_api: Provider
) -> None:
    """No worker on its state: one line, its own exit code, no verdict (nothing ran), and
    nothing enqueued to run inside a later run. Checked by mutation: without the check,
    enqueue.py waited for its deadline and this test fails. The command it names starts a
    worker as this terminal's run expects: its database, the API it calls (--port) and the
    claim's settings; with the port and claim left out, a user following it got a worker that
    called another port without the claim."""
    port = live_api.base_url.rsplit(":", 1)[1]
    db = tmp_path / "enqueue.db"
    env = {**os.environ, "DEMO_DB": str(db), "NO_COLOR": "1", "DEMO_DEAD_AFTER": "20"}
    result = subprocess.run(
        [sys.executable, "enqueue.py", "keyed", "--port", port, "--no-chart"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert result.returncode == checks.NO_WORKER_EXIT, result.stdout + result.stderr
    assert result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"enqueue.py: no worker is running on {db} "), line
    start = f"DEMO_DB={db} DEMO_API_PORT={port} DEMO_DEAD_AFTER=20 uv run pynenc --app tasks.app"
    assert f"{start} runner start" in line, line
    assert "GUARANTEE BROKEN" not in result.stdout + result.stderr
    assert invocations_in(str(db)) == 0  # nothing left to run inside the next run


@pytest.mark.slow  # a worker's whole start, waited for: ~4 s
@pytest.mark.e2e
def test_enqueue_typed_while_the_worker_still_starts_waits_for_it(
    tmp_path: Path, provider: Provider
) -> None:
    """The four terminals typed quickly: the worker is still importing when enqueue.py looks.
    It says so in one line and waits, then runs. The worker is held (SIGSTOP) until that line
    is out, so it cannot beat first. Checked by mutation: with heartbeats.awaited reduced to
    in_app, enqueue.py refused at once ("no worker is running", exit 3) and this test fails."""
    pid: list[int] = []

    def go_on(worker: Child, _: subprocess.Popen) -> None:
        pid.append(worker.proc.pid)
        os.kill(worker.proc.pid, signal.SIGCONT)

    said, ended = enqueue_beside_a_held_worker(tmp_path, provider, {}, go_on)
    assert said.startswith(f"enqueue.py: a worker is starting (pid {pid[0]}"), said + ended.stderr
    assert ended.returncode == 0, said + ended.stdout + ended.stderr
    assert "12 enqueued -> 12 calls" in ended.stdout, ended.stdout


def enqueue_beside_a_held_worker(
    tmp_path: Path,
    provider: Provider,
    worker_env: dict[str, str],
    act: Callable[[Child, subprocess.Popen], object],
) -> tuple[str, subprocess.CompletedProcess]:
    """enqueue.py typed while a worker still starts: the worker is held (SIGSTOP) until
    enqueue.py's first line is out, then act(worker, enqueuing) lets it go on, ends it, or
    interrupts enqueue.py. That first line, and how enqueue.py ended."""
    db = str(tmp_path / "starting.db")
    argv = [sys.executable, "-m", "pynenc", "--app", "tasks.app", "runner", "start"]
    env = {**os.environ, "DEMO_DB": db, "NO_COLOR": "1"}
    worker = start_child("w", argv, tmp_path / "w.log", {**env, **worker_env}, ROOT)
    port = provider.base_url.rsplit(":", 1)[1]
    argv = [sys.executable, "enqueue.py", "unsafe", "--port", port, "--no-chart", "--no-links"]
    try:
        os.kill(worker.proc.pid, signal.SIGSTOP)
        enqueuing = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            said = enqueuing.stderr.readline()  # its first line; it waits meanwhile
            act(worker, enqueuing)
            out, err = enqueuing.communicate(timeout=DEADLINE)
        finally:
            if enqueuing.poll() is None:
                enqueuing.kill()
                enqueuing.wait(DEADLINE)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.proc.pid, signal.SIGCONT)
        stop_children([worker])
    return said, subprocess.CompletedProcess(argv, enqueuing.returncode, out, err)


@pytest.mark.slow  # a worker's start and an enqueue.py beside it, twice: ~6 s
@pytest.mark.e2e
@pytest.mark.parametrize("worker_claim, enqueue_claim", [("1", "0"), ("0", "1")])
def test_enqueue_typed_beside_a_starting_worker_of_another_claim_setting_is_refused(
    tmp_path: Path,
    provider: Provider,
    monkeypatch: pytest.MonkeyPatch,
    worker_claim: str,
    enqueue_claim: str,
) -> None:
    """A worker still starting has joined no fleet yet: enqueue.py checks the fleet once it has
    waited, and while it waits. Checked by mutation: with the fleet checked only before the
    wait (as it was), a claim-off enqueue.py ran its calls on a claim-on worker (exit 0), and
    a claim-on one waited 20 s for a claim-off worker it cannot see, then said no worker runs
    (exit 3); this test fails both ways."""
    monkeypatch.setenv("DEMO_ATOMIC_CLAIM", enqueue_claim)
    said, ended = enqueue_beside_a_held_worker(
        tmp_path,
        provider,
        {"DEMO_ATOMIC_CLAIM": worker_claim},
        lambda worker, _: os.kill(worker.proc.pid, signal.SIGCONT),
    )
    assert said.startswith("enqueue.py: a worker is starting"), said + ended.stderr
    assert ended.returncode == 2, said + ended.stdout + ended.stderr
    assert "a live worker on the same store runs with other settings" in ended.stderr
    assert provider.report()["calls"] == 0


@pytest.mark.e2e
def test_a_worker_that_exits_while_starting_is_named_as_gone(
    tmp_path: Path, provider: Provider
) -> None:
    """A worker that dies before its first beat: enqueue.py says that worker exited, not
    merely that none runs. Checked by mutation: with awaited's reason left out, the line named
    no exited worker and this test fails."""
    said, ended = enqueue_beside_a_held_worker(
        tmp_path, provider, {}, lambda worker, _: os.killpg(worker.proc.pid, signal.SIGKILL)
    )
    assert said.startswith("enqueue.py: a worker is starting"), said + ended.stderr
    assert ended.returncode == 3, said + ended.stdout + ended.stderr
    assert "that was starting (pid" in ended.stderr and "exited" in ended.stderr, ended.stderr
    assert provider.report()["calls"] == 0


@pytest.mark.e2e
def test_ctrl_c_while_enqueue_waits_for_a_worker_is_one_line(
    tmp_path: Path, provider: Provider
) -> None:
    """Ctrl-C while enqueue.py waits for a starting worker: one line, exit 130, nothing
    enqueued. Checked by mutation: without the except around the wait, a KeyboardInterrupt
    traceback from demo/heartbeats.py, and this test fails."""
    said, ended = enqueue_beside_a_held_worker(
        tmp_path, provider, {}, lambda _, enqueuing: enqueuing.send_signal(signal.SIGINT)
    )
    assert said.startswith("enqueue.py: a worker is starting"), said + ended.stderr
    assert ended.returncode == 130, said + ended.stdout + ended.stderr
    assert ended.stderr.strip().splitlines() == [
        "enqueue.py: interrupted while waiting for a worker; nothing was enqueued"
    ], ended.stderr
    assert provider.report()["calls"] == 0


def test_a_recent_heartbeat_counts_only_while_its_process_runs(
    start_worker: Callable[..., Child],
) -> None:
    """pynenc keeps a stopped runner's heartbeat: the worker of a run that just ended must not
    pass for a live one. For a runner of unknown pid, its heartbeat alone counts."""
    worker = start_worker()
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    here, now = socket.gethostname(), time.time()
    beats = [
        ("ThreadRunner", int(ended.stdout), here, now),  # stopped a moment ago
        ("ThreadRunner", worker.proc.pid, here, now - 1),
        ("ThreadRunner", worker.proc.pid, here, now - heartbeats.ALIVE_WITHIN - 1),  # too long ago
        (None, None, None, now - 2),
        ("ThreadRunner", 1, "another-host", now - 3),  # nothing to look at there but its beat
    ]
    assert [(r.pid, r.host) for r in heartbeats.alive(beats)] == [
        (worker.proc.pid, here),
        (None, None),
        (1, "another-host"),
    ]


def invocations_in(db: str, status: str | None = None) -> int:
    """How many invocations pynenc's orchestrator holds in a database (with that status)."""
    with closing(sqlite3.connect(db)) as conn:
        tables = "SELECT name FROM sqlite_master WHERE type = 'table'"
        suffix = "_orchestrator_invocations"
        (table,) = [t for (t,) in conn.execute(tables) if t.endswith(suffix)]
        where, args = ("WHERE status = ?", (status,)) if status else ("", ())
        return conn.execute(f"SELECT COUNT(*) FROM {table} {where}", args).fetchone()[0]


@contextlib.contextmanager
def workers_on(db: str, folder: Path, count: int = 1, **env: str) -> Iterator[list[Child]]:
    """count real workers on a database of the test's own, once each has beat; stopped after."""
    argv = [sys.executable, "-m", "pynenc", "--app", "tasks.app", "runner", "start"]
    env = {**os.environ, "DEMO_DB": db, **env}
    started = [start_child(f"w{n}", argv, folder / f"w{n}.log", env, ROOT) for n in range(count)]
    try:
        wait_until(lambda: len(heartbeats.in_sqlite(db)) == count, DEADLINE, "the workers' beats")
        yield started
    finally:
        stop_children(started)


def enqueue_on(
    db: str, provider: Provider, scenario: str, *flags: str
) -> subprocess.CompletedProcess:
    port = provider.base_url.rsplit(":", 1)[1]
    return subprocess.run(
        [
            sys.executable,
            "enqueue.py",
            scenario,
            "--port",
            port,
            "--no-chart",
            "--no-links",
            *flags,
        ],
        cwd=ROOT,
        env={**os.environ, "DEMO_DB": db, "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )


@pytest.mark.slow
@pytest.mark.e2e
def test_three_workers_count_for_the_floor_and_a_second_enqueue_is_refused(
    tmp_path: Path, provider: Provider
) -> None:
    """Three workers: A's 12 calls fit in one wave of 24 threads, so its floor is one hold
    (0.1 s here), not two, and each worker says in its first line what it runs on. A second
    enqueue.py meanwhile would reset the counts under the first: it is refused in one line
    naming the first run, which ends with its own figures. Checked by mutation: with the
    owner checks removed from the API, the second run reset the counts under the first, and
    both printed false figures."""
    db = str(tmp_path / "three.db")
    port = provider.base_url.rsplit(":", 1)[1]
    argv = [sys.executable, "enqueue.py", "--port", port, "--no-chart", "--no-links"]
    env = {**os.environ, "DEMO_DB": db, "NO_COLOR": "1"}
    with workers_on(db, tmp_path, 3) as workers:
        first = subprocess.Popen(
            [*argv, "unsafe", "--hold", "0.1"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            with paused(provider):  # the first run's calls stay in flight meanwhile
                wait_until(lambda: provider.report()["calls"] > 0, DEADLINE, "the first calls")
                second = enqueue_on(db, provider, "drop")
            out, err = first.communicate(timeout=DEADLINE)
        finally:
            if first.poll() is None:
                first.kill()
                first.wait(DEADLINE)
    assert second.returncode == checks.BUSY_EXIT, second.stdout + second.stderr
    (line,) = second.stderr.strip().splitlines()
    assert "another run uses this provider: 'enqueue.py unsafe', started at" in line, line
    assert second.stdout == ""
    assert first.returncode == 0, out + err
    assert "--- 3 workers live (24 threads): the floors count them" in out
    assert "12 enqueued -> 12 calls, 9 collisions" in out and "(floor 0.10s, " in out, out
    url = provider.base_url
    said = f"worker: sqlite {db}, ThreadRunner on pynenc's own classes, atomic claim off, "
    said += f"calling the API at {url}"
    assert [worker_line(w) for w in workers] == [said] * 3


@pytest.mark.slow
@pytest.mark.e2e
def test_a_worker_calling_another_address_is_named_as_the_cause(
    tmp_path: Path, provider: Provider
) -> None:
    """The worker was started with another DEMO_API_PORT than enqueue.py's --port: every call
    ends (here, failed), and none reaches this provider. enqueue.py says why, with its port."""
    db, elsewhere = str(tmp_path / "elsewhere.db"), free_port()
    with workers_on(db, tmp_path, DEMO_API_PORT=str(elsewhere)) as (worker,):
        result = enqueue_on(db, provider, "drop")
    assert result.returncode == 1, result.stdout + result.stderr
    said = f"the provider at {provider.base_url} saw none of these calls, yet they ended"
    assert said in result.stdout, result.stdout
    port = provider.base_url.rsplit(":", 1)[1]
    assert f"start it with DEMO_API_PORT={port}" in result.stdout
    said = worker_line(worker)
    assert said.endswith(f"calling the API at http://127.0.0.1:{elsewhere}"), said


@pytest.mark.slow
@pytest.mark.e2e
def test_a_worker_gone_mid_run_is_said_at_once_and_its_unpicked_calls_are_cancelled(
    tmp_path: Path, provider: Provider
) -> None:
    """The only worker is killed while B runs: enqueue.py says so in one line within seconds
    (not after its deadline), with its own exit code and no verdict, and the calls no worker
    had picked up end unrun. Checked by mutation: without the watch on live workers,
    enqueue.py waited out its 60 s deadline."""
    db = str(tmp_path / "gone.db")
    port = provider.base_url.rsplit(":", 1)[1]
    argv = [sys.executable, "enqueue.py", "keyed", "--port", port, "--no-chart", "--no-links"]
    env = {**os.environ, "DEMO_DB": db, "NO_COLOR": "1"}
    with workers_on(db, tmp_path) as (worker,), paused(provider):
        run = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            wait_until(lambda: provider.report()["in_flight"] == 3, DEADLINE, "B's first calls")
            os.killpg(worker.proc.pid, signal.SIGKILL)
            out, err = run.communicate(timeout=DEADLINE)
        finally:
            if run.poll() is None:
                run.kill()
                run.wait(DEADLINE)
    assert run.returncode == checks.NO_WORKER_EXIT, out + err
    (line,) = err.strip().splitlines()
    assert f"every worker on {db} stopped mid-run; " in line, line
    assert "invocations no worker had picked up are cancelled (never to run)" in line, line
    assert "GUARANTEE BROKEN" not in out + err
    assert invocations_in(db, "registered") == 0


@pytest.mark.slow
@pytest.mark.e2e
def test_ctrl_c_on_enqueue_mid_run_says_what_it_left_in_one_line(
    tmp_path: Path, provider: Provider
) -> None:
    """Ctrl-C while B's first calls are in flight: one line, no traceback, exit 130, and the
    calls no worker had picked up end unrun. What it could not end would run inside the next
    run: the next run names it instead of starting. Checked by mutation: without the check
    for an earlier run's leftovers, the next run started.

    The Ctrl-C lands while the worker still sorts B's other calls: the worker goes on. Checked
    by mutation: ending REGISTERED ones where they are, not off the queue, stopped the worker
    (its write after enqueue.py's failed) or made enqueue.py's fail: 2 runs in 15 failed.

    The worker's calls outlast the test (a call timeout of DEADLINE, not the default 10 s):
    the paused provider holds each up to 30 s, one per account at a time, so B's leftovers are
    there for 2 minutes. With 10 s they had all failed (4 waves) before the next run looked on
    a loaded machine: it started, and its own calls timed out one wave after another."""
    db = str(tmp_path / "ctrl-c.db")
    port = provider.base_url.rsplit(":", 1)[1]
    argv = [sys.executable, "enqueue.py", "keyed", "--port", port, "--no-chart", "--no-links"]
    env = {**os.environ, "DEMO_DB": db, "NO_COLOR": "1"}
    calls_outlast = {"DEMO_CALL_TIMEOUT": f"{DEADLINE:g}"}
    with workers_on(db, tmp_path, **calls_outlast) as (worker,), paused(provider):
        run = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            wait_until(lambda: provider.report()["in_flight"] == 3, DEADLINE, "B's first calls")
            os.killpg(run.pid, signal.SIGINT)
            out, err = run.communicate(timeout=DEADLINE)
            refused = enqueue_on(db, provider, "keyed")  # its 3 calls still in flight
        finally:
            if run.poll() is None:
                run.kill()
                run.wait(DEADLINE)
        assert worker.proc.poll() is None, worker.log_path.read_text()[-3000:]
    assert refused.returncode == checks.BUSY_EXIT, refused.stdout + refused.stderr
    assert refused.stdout == ""
    (left,) = refused.stderr.strip().splitlines()
    assert "invocations of an earlier run are still unfinished on" in left, left
    assert run.returncode == 130, out + err
    assert "Traceback" not in err, err
    (line,) = err.strip().splitlines()
    assert line.startswith("enqueue.py: interrupted; "), line
    assert "invocations no worker had picked up are cancelled (never to run)" in line, line
    assert invocations_in(db, "registered") == 0


def test_sample_never_deletes_a_database_a_running_worker_uses(
    start_worker: Callable[..., Child],
) -> None:
    """The four-terminal way's worker runs on the default database; sample.py on another port
    would delete that database under it. It refuses in one line, naming the worker, and the
    worker goes on. Checked by mutation: without the check in Stack.start, the database was
    deleted under the worker and this test fails."""
    worker = start_worker()
    db = os.environ["DEMO_DB"]
    inode = os.stat(db).st_ino
    result = subprocess.run(
        [sys.executable, "sample.py", "--port", str(free_port()), "--db", db],
        cwd=ROOT,
        env={**os.environ, "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"sample.py: {db} is in use by a running worker"), line
    assert f"pid {worker.proc.pid} on " in line and "--db other.db" in line, line
    assert os.stat(db).st_ino == inode
    assert worker.proc.poll() is None
    after = tasks.call_keyed(unique(), "op1")
    assert wait_final(after.invocation_id) == [InvocationStatus.SUCCESS]


def test_a_worker_without_the_claim_is_seen_by_a_process_with_it(
    start_worker: Callable[..., Child], claim_app: Provider
) -> None:
    """A process with the claim (sample.py on a shared Redis, enqueue.py) looks for the workers
    on its store by their heartbeats: a worker without the claim must count, or sample.py
    purged a Redis under it and enqueue.py took it for one still starting. The claim's own list
    counts only runners that beat its way. Checked by mutation: with demo/heartbeats.py reading
    the orchestrator's _get_active_runners again, the worker is not found and this test fails."""
    worker = start_worker()
    assert worker.proc.pid in {r.pid for r in heartbeats.in_app(tasks.app)}


@pytest.mark.parametrize(
    "script, args",
    [(enqueue, ["everything"]), (sample, ["--workers", "0"]), (stress, ["--rounds", "0"])],
    ids=["enqueue.py", "sample.py", "tools.stress --rounds 0"],
)
def test_unknown_input_prints_usage_and_exits_2(
    script: ModuleType, args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        script.main(args)
    err = capsys.readouterr().err
    assert exited.value.code == 2, err
    assert err.startswith("usage:"), err


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


def test_only_the_first_stop_signal_raises_and_none_cuts_a_teardown_short() -> None:
    """A second Ctrl-C, or one that comes while children are being stopped, is kept for the
    exit code and raises nothing."""
    with stop_on_signals():
        with pytest.raises(KeyboardInterrupt, match="signal 2"):
            signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGTERM)  # raises nothing: the first one is on its way
        assert stop_signal() == signal.SIGINT
    assert stop_signal() is None
    with stop_on_signals(), held_signals():
        signal.raise_signal(signal.SIGTERM)  # inside a teardown: kept, not raised
        assert stop_signal() == signal.SIGTERM


def test_a_worker_is_up_by_its_own_heartbeat_not_by_another_runners(tmp_path: Path) -> None:
    """The stack counts a worker up once a runner beats under the worker's pid. Another
    runner beating on the store this process reads (the session's, shared by the tests) is
    not one of ours: counted, a worker that refused its settings looked up. Checked by
    mutation: with any new beating runner counted (len(beating) >= len(fresh)), the first
    assertion fails. The beats go to an app and database of the test's own: written to the
    session's, they outlived the test (a stack started later deleted that file under them)."""
    app = PynencBuilder().app_id(f"up-{uuid.uuid4().hex[:8]}").sqlite(str(tmp_path / "up.db"))
    app = app.build()
    other = RunnerContext(runner_cls="ThreadRunner", runner_id=f"other-{uuid.uuid4()}")
    app.state_backend.store_runner_context(other)  # this process: no pynenc worker, never live
    app.orchestrator.register_runner_heartbeats([other.runner_id])
    # The stack is handed this app, not tasks.py's.
    stack = Stack(
        {}, tmp_path / "logs", Sample("tasks.app", "api_server:app", lambda: app), cwd=ROOT
    )
    with stack:
        # Named like a worker ("pynenc" in its command line), as heartbeats.in_app looks for.
        idle = [sys.executable, "-c", "import time; time.sleep(60)", "pynenc"]
        worker = stack._start("worker 1", idle, tmp_path / "idle.log", ROOT)
        assert not stack.workers_up([worker])
        mine = RunnerContext(runner_cls="ThreadWorker", pid=worker.proc.pid)
        app.state_backend.store_runner_context(mine)
        app.orchestrator.register_runner_heartbeats([mine.runner_id])
        assert stack.workers_up([worker])


def test_a_worker_stores_its_pid_as_it_starts_not_with_its_first_call(tmp_path: Path) -> None:
    """As its first heartbeat lands, a worker's runner context (its pid) is already stored, so
    that a live worker is told from a stopped one by its pid from the start. Checked by
    mutation: without the store in Announced._on_start, the first beat came with no context
    (pynenc stores one seconds later) and this test fails."""
    db = str(tmp_path / "pid.db")
    with workers_on(db, tmp_path) as (worker,):
        (runner,) = heartbeats.in_sqlite(db)
    assert runner.pid == worker.proc.pid, runner


def test_a_child_stopped_before_its_death_is_explained_names_it(tmp_path: Path) -> None:
    """A request that failed because the API died is explained after the stack has stopped
    (sample.py's `except` runs outside `with stack`), when the log handles are closed: the
    explanation still names the child and its exit code.

    Checked against a mutation, reverted: Child.lines flushing the closed handle again
    (ValueError: flush of closed file, the race the end-to-end test above hit now and then).
    """
    argv = [sys.executable, "-c", "print('booted', flush=True); raise SystemExit(7)"]
    child = start_child("API", argv, tmp_path / "api.log")
    child.proc.wait(timeout=DEADLINE)
    stop_children([child])
    assert child.log.closed
    stack = Stack({}, tmp_path / "logs", Sample("tasks.app", "api_server:app", lambda: tasks.app))
    stack.started.append(child)
    why = stack.explain(ConnectionError("the API hung up"))
    assert f"API (pid {child.proc.pid}) exited with code 7" in why
    assert "booted" in why


def test_stress_cpu_sums_each_kind_of_process_from_proc() -> None:
    """--cpu's figures: each child's CPU seconds from /proc, summed by kind (two workers make
    one "worker" figure), and this process's as the producer's; a child gone counts nothing."""
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    argv = [sys.executable, "-c", burn + "\nprint('done', flush=True)"]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    children = [SimpleNamespace(name=f"worker {n}", proc=p) for n, p in enumerate(procs)]
    stack = SimpleNamespace(started=children)
    try:
        assert [p.stdout.readline() for p in procs if p.stdout] == ["done\n", "done\n"]
        burnt = stress.cpu_seconds(stack)  # type: ignore[arg-type]  # exited, not yet reaped
        assert set(burnt) == {"worker", "producer"} and burnt["worker"] >= 0.55
    finally:
        for p in procs:
            p.wait()
    assert set(stress.cpu_seconds(stack)) == {"producer"}  # type: ignore[arg-type]
    before, after = Counter(worker=1.0, producer=0.5), Counter(worker=3.0, producer=1.5)
    assert stress.per_call(before, after, 1000) == (
        "CPU per call, ms: producer 1.00, worker 2.00; all 3.00"
    )
