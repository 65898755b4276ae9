"""What sample.py's start-up rests on (docs/speed.md), checked without timing it.

The API starts before sample.py imports pynenc, httpx or rich, and the worker forks from it once
it has imported tasks.py; the provider boots without pynenc and httpx without its command line;
the figure counts from the command typed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from demo.processes import free_port
from demo.stack import ROOT
from helpers import processes_mentioning, run_sample

pytestmark = pytest.mark.integration  # a Python process each, no network

HEAVY = ("pynenc", "httpx", "rich", "fastapi", "click", "pygments")
SHOW = f"import sys; print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
# sample.py's own start, up to the moment it starts its first child, where it stops.
UNTIL_THE_FIRST_CHILD = f"""
import sys
import sample
from demo import stack

def start_child(*args, **kwargs):
    {SHOW}
    raise SystemExit(0)

stack.start_child = start_child
sample.main(sys.argv[1:])
"""


# sample.py's run up to its first scenario, with its worker seen from sample.py: what had been
# imported when it forked, and the worker's name, parent, group and command line; then whether
# it was still there once the run had ended.
THE_FORKED_WORKER = """
import json, os, sys
import sample
from demo import launch, processes

seen = {}
fork = processes.Forked.__init__

def spy(self, run, log):
    seen["loaded"] = sorted(m for m in ("tasks", "pynenc") if m in sys.modules)
    fork(self, run, log)

def body(stack, view):
    (worker,) = stack.workers
    pid = seen["pid"] = worker.proc.pid
    with open(f"/proc/{pid}/comm") as comm, open(f"/proc/{pid}/cmdline", "rb") as cmd:
        seen["worker"] = comm.read().strip(), cmd.read() == open("/proc/self/cmdline", "rb").read()
    mine = launch._stat(pid)[1] == str(os.getpid())  # its parent: this process
    seen["family"] = os.getpgid(pid) == os.getsid(pid) == pid, mine
    return 0

processes.Forked.__init__ = spy
seen["code"] = launch.run(sample.parse_args(sys.argv[1:]), sample.SAMPLE, body)
seen["left"] = os.path.exists(f"/proc/{seen.pop('pid')}")
print(json.dumps(seen))
"""
# Forked children that end by returning, by SystemExit and by an exception: their exit codes,
# and what they printed, which is never what the code after their fork prints.
ENDINGS = """
import sys
from pathlib import Path
from demo.processes import start_child

def fail():
    raise RuntimeError("in the child")

runs = {"returned": lambda: None, "exited": lambda: sys.exit(3), "raised": fail}
children = [start_child(n, run, Path(sys.argv[1], n + ".log")) for n, run in runs.items()]
print("after the forks:", [child.proc.wait(30) for child in children])
print(*[child.log_path.read_text().count("after the forks") for child in children])
"""

# A worker whose stop signal lands where pynenc has installed its handler but not yet set
# `running` (pynenc's on_start registers its triggers in between): what became of the run.
A_STOP_WHILE_STARTING = """
import os, signal
import tasks

runner = tasks.app.runner
runner.init_trigger_tasks_modules = lambda: os.kill(os.getpid(), signal.SIGTERM)
runner.run()
print(type(runner).__name__, "stopped")
"""


def python(code: str, *args: str, env: dict[str, str] | None = None) -> str:
    argv = [sys.executable, "-c", code, *args]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip()


def test_sample_starts_its_children_before_it_imports_the_heavy_modules(tmp_path: Path) -> None:
    """Three processes boot at once on two cores: one that imports pynenc before it starts the
    other two keeps a core idle meanwhile. Checked by mutation: with `from pynenc import Pynenc`
    at the top of sample.py again, as it was, pynenc is loaded by then and this fails."""
    env = {**os.environ, "DEMO_LOG_DIR": str(tmp_path / "logs")}
    args = ("--port", str(free_port()), "--db", str(tmp_path / "demo.db"))
    assert python(UNTIL_THE_FIRST_CHILD, *args, env=env) == ""


def test_the_provider_and_the_worker_boot_without_what_they_do_not_run(tmp_path: Path) -> None:
    """Checked by mutation: with demo/scenarios.py importing pynenc at its top again, the
    provider loads it and the first assertion fails; without demo/__init__.py's line, the
    worker's httpx loads click, rich and pygments and the second fails."""
    assert "pynenc" not in python(f"import api_server; {SHOW}").split()
    env = {**os.environ, "DEMO_DB": str(tmp_path / "demo.db")}
    assert python(f"import tasks; {SHOW}", env=env).split() == ["pynenc", "httpx"]


def test_the_start_up_counts_from_the_uv_run_a_user_types() -> None:
    """`uv run python sample.py` starts Python as a child of uv, whose own start (resolving the
    environment) is part of what a user waits for; started otherwise, the process is the
    command. Checked by mutation: with command_pid() always the process's own, the first fails."""
    check = "import os; from demo.launch import command_pid; print(command_pid() == {})"
    uv_run = ["uv", "run", "python", "-c", check.format("os.getppid()")]
    done = subprocess.run(uv_run, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "True", done.stdout + done.stderr
    assert python(check.format("os.getpid()")) == "True"


def test_the_worker_forks_from_sample_py_once_tasks_py_is_loaded(tmp_path: Path) -> None:
    """One import of pynenc and tasks.py for sample.py and its worker: the worker is forked
    once sample.py has loaded them, never runs a program of its own (its command line is
    sample.py's), names itself pynenc (keyclaim's fleet check and the heartbeats look for the
    name), leads its own group and session (stop_children signals the group), and is gone once
    the run has ended. Checked by mutations, each failing it: sample.py's Sample(fork=False)
    (the worker is `python -m pynenc` again: nothing loaded at a fork, its name python); no
    os.setsid() in the fork (not the leader of its group, and left running after the run);
    no prctl in demo/runners.py, or keyclaim's alive_here reading the command line only (the
    run never saw its worker register, and ended with exit 1)."""
    env = {**os.environ, "DEMO_LOG_DIR": str(tmp_path / "logs")}
    args = ("--port", str(free_port()), "--db", str(tmp_path / "demo.db"), "--no-chart")
    # A script, not `python -c`: its command line, like `python sample.py`'s, says no pynenc.
    script = tmp_path / "start.py"
    script.write_text(f"import os, sys\nsys.path.insert(0, os.getcwd())\n{THE_FORKED_WORKER}")
    argv = [sys.executable, str(script), *args]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    seen = json.loads(done.stdout.splitlines()[-1])
    assert seen == {
        "loaded": ["pynenc", "tasks"],
        "worker": ["pynenc", True],
        "family": [True, True],
        "code": 0,
        "left": False,
    }


def test_a_forked_child_ends_with_its_function_and_never_returns_to_its_caller(
    tmp_path: Path,
) -> None:
    """Its exit code is its function's: 0 when it returns, SystemExit's code, 1 on an exception
    (whose traceback is in its log); and the code after the fork runs in the parent only.
    Checked by mutation: without the os._exit ending Forked._run, each child went on in its
    caller's code, and the exit codes were [1, 1, 1]."""
    first, second = python(ENDINGS, str(tmp_path)).splitlines()
    assert first == "after the forks: [0, 3, 1]"
    assert second == "0 0 0"
    assert "RuntimeError: in the child" in (tmp_path / "raised.log").read_text()


def test_a_forked_worker_is_stopped_when_the_start_misses_its_deadline(tmp_path: Path) -> None:
    """The start's deadline ends the run after the fork, before the worker is up: exit 1, one
    line, and no process left that runs on the run's database (the forked worker's command line
    is sample.py's, which names it). Checked by mutation: with Stack.spawn_worker no longer
    recording a forked worker in `started`, it outlived sample.py and this failed."""
    done = run_sample(tmp_path, "--ready-timeout", "0.001", "--no-chart")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "gave up after 0.001s waiting for" in done.stderr
    assert (tmp_path / "logs" / "worker-1.log").exists()  # forked before the deadline
    assert processes_mentioning(str(tmp_path / "demo.db")) == []


def test_a_stop_that_comes_while_pynenc_starts_the_worker_stops_it(tmp_path: Path) -> None:
    """A forked worker is ready to be stopped within milliseconds, while pynenc's on_start
    still runs: a stop then must end it, not be lost until the worker is killed. Checked by
    mutation: without demo/runners.py's `running` reset after the start, the runner ran on
    and this timed out."""
    env = {**os.environ, "DEMO_DB": str(tmp_path / "demo.db")}
    assert python(A_STOP_WHILE_STARTING, env=env).splitlines()[-1] == "ThreadWorker stopped"
