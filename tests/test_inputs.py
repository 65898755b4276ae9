"""What a run is given is checked before anything starts.

The --db file it would delete, the API's host, --bench-backlogs, and every number a flag or a
DEMO_* variable holds."""

import argparse
import hashlib
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

import sample
from demo import settings
from demo.database import TABLE_PREFIX, not_ours
from demo.preflight import RunRefused, fresh_sqlite, preflight
from demo.processes import free_port
from demo.stack import ROOT
from helpers import user_env
from tools import bench


def bench_args(argv: list[str]) -> argparse.Namespace:
    """The benchmark's flags as tools/bench.py parses them: sample.py's, and its own."""
    return bench.build_parser().parse_args(argv)


SIDE = ("", "-wal", "-shm", "-journal")


def files(path: Path) -> dict[str, str]:
    """The database file and whatever SQLite keeps beside it, by content."""
    found = {}
    for suffix in SIDE:
        if (side := Path(f"{path}{suffix}")).exists():
            found[suffix] = hashlib.sha256(side.read_bytes()).hexdigest()
    return found


def one_line(stderr: str, *words: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert all(word in lines[0] for word in words), lines[0]
    assert "Traceback" not in stderr


def other_database(path: Path, *, left_open: bool) -> None:
    """Someone else's SQLite database in WAL mode. left_open: as a process killed while it had
    it open leaves it, its last commit only in the -wal beside it (and a -shm)."""
    script = (
        "import os, sqlite3, sys\n"
        "conn = sqlite3.connect(sys.argv[1])\n"
        "conn.execute('PRAGMA journal_mode=WAL')\n"
        "conn.execute('CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)')\n"
        "conn.execute('INSERT INTO invoices (total) VALUES (12.5)')\n"
        "conn.commit()\n"
        "if sys.argv[2] == '1':\n"
        "    os.kill(os.getpid(), 9)\n"
        "conn.close()\n"
    )
    subprocess.run([sys.executable, "-c", script, str(path), "1" if left_open else "0"])


def pynenc_database(path: Path, app_id: str = "tasks", *, left_open: bool = False) -> None:
    """What pynenc 0.3.1 makes of a SQLite file: tasks.py's app with the claim's tables too, or
    another app's, in a process of its own (pynenc keeps one app per app_id in a process).
    left_open: killed while a connection was open, its tables only in the -wal so far."""
    script = (
        "import os, sqlite3, sys\n"
        "from pynenc import PynencBuilder\n"
        "import keyclaim\n"
        "held = sqlite3.connect(sys.argv[2])\n"
        "held.execute('PRAGMA journal_mode=WAL')\n"
        "held.execute('SELECT count(*) FROM sqlite_master').fetchall()  # it keeps the WAL\n"
        "if sys.argv[1] == 'tasks':\n"
        "    import tasks\n"
        "    app = tasks.app\n"
        "else:\n"
        "    builder = PynencBuilder().app_id(sys.argv[1]).sqlite(sys.argv[2])\n"
        "    app = keyclaim.install(builder, 15.0, 10.0).build()\n"
        "_ = (app.broker, app.orchestrator, app.state_backend, app.trigger)\n"
        "_ = app.client_data_store\n"
        "if sys.argv[3] == '1':\n"
        "    os.kill(os.getpid(), 9)\n"
    )
    argv = [sys.executable, "-c", script, app_id, str(path), "1" if left_open else "0"]
    env = {**os.environ, "DEMO_DB": str(path), "DEMO_ATOMIC_CLAIM": "1"}
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == (-9 if left_open else 0), done.stderr


# --- 1. --db: a run deletes only this demo's database ---------------------------------------


@pytest.mark.e2e
def test_sample_refuses_to_delete_a_file_that_is_not_its_database(tmp_path: Path) -> None:
    """`sample.py --db victim.txt` (a copy of the README) deleted it for a database, exit 0.
    Now one line naming the file and why, exit 2, nothing started, the file as it was.
    Checked by making not_ours return None: the test fails (exit 0, victim.txt a database)."""
    victim = tmp_path / "victim.txt"
    victim.write_bytes((ROOT / "README.md").read_bytes())
    before = files(victim)
    result = subprocess.run(
        ["uv", "run", "python", "sample.py", "--db", str(victim), "--port", str(free_port())],
        cwd=ROOT,
        env=user_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    one_line(result.stderr, "sample.py:", "--db", str(victim), "not a SQLite database")
    assert files(victim) == before
    assert not (tmp_path / "logs").exists(), "nothing may start before the refusal"


@pytest.mark.parametrize("left_open", [False, True], ids=["closed", "left-open-with-wal"])
def test_a_database_of_something_else_is_refused_and_left_byte_for_byte(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    left_open: bool,
) -> None:
    """A SQLite database that is not pynenc's: refused in one line, exit 2, before anything
    starts; it, its -wal and its -shm stay as they were, none is created.
    Checked by making not_ours accept any SQLite header: the test fails (exit 0, deleted); and
    by reading the tables through mode=ro without immutable=1: the test fails (a -wal and a
    -shm appear beside the closed one, the left-open one's -shm is rewritten)."""
    db = tmp_path / "billing.db"
    other_database(db, left_open=left_open)
    before = files(db)
    assert ("-wal" in before) is left_open
    monkeypatch.setenv("DEMO_LOG_DIR", str(tmp_path / "logs"))
    code = sample.main(["--port", str(free_port()), "--db", str(db), "--no-links"])
    assert code == 2
    one_line(capsys.readouterr().err, str(db), "'invoices'", "not this demo's")
    assert files(db) == before
    assert not (tmp_path / "logs").exists(), "nothing may start before the refusal"


@pytest.mark.slow  # four pynenc databases, each built in a process of its own
def test_only_this_demos_pynenc_database_or_an_empty_file_may_be_deleted(tmp_path: Path) -> None:
    """The tables pynenc 0.3.1 makes for tasks.py's app (the claim's too) are this demo's, in
    the file or still in its -wal alone; another pynenc app's, or no tables at all, are not.
    Checked by matching any pynenc-looking prefix instead of TABLE_PREFIX: the test fails
    (billing_app's database is taken for this demo's); and by not reading the -wal's copy:
    the test fails (the demo's left-open database is refused)."""
    ours, left_open, theirs = tmp_path / "ours.db", tmp_path / "left.db", tmp_path / "theirs.db"
    pynenc_database(ours)
    pynenc_database(left_open, left_open=True)
    pynenc_database(theirs, "billing_app")
    assert not_ours(str(ours)) is None
    before = files(left_open)
    assert {"", "-wal", "-shm"} <= before.keys()
    assert not_ours(str(left_open)) is None
    assert files(left_open) == before
    assert TABLE_PREFIX.startswith("concurrency_demo_")
    assert "not this demo's pynenc ones: 'billing_app_" in (not_ours(str(theirs)) or "")

    (tmp_path / "empty.db").touch()
    assert not_ours(str(tmp_path / "empty.db")) is None
    assert not_ours(str(tmp_path / "absent.db")) is None
    with closing(sqlite3.connect(tmp_path / "no-tables.db")) as conn:
        conn.execute("PRAGMA user_version = 7")  # a header, no table
    assert "without this demo's pynenc tables" in (not_ours(str(tmp_path / "no-tables.db")) or "")


def test_fresh_sqlite_deletes_the_demos_database_and_refuses_anything_else(tmp_path: Path) -> None:
    """The one function that deletes checks by itself, so no caller can skip the check.
    Checked by removing refuse_unless_ours from fresh_sqlite: the test fails (notes.txt goes)."""
    ours = tmp_path / "ours.db"
    pynenc_database(ours, left_open=True)
    fresh_sqlite(str(ours))
    assert files(ours) == {}

    notes = tmp_path / "notes.txt"
    notes.write_text("not a database\n")
    with pytest.raises(RunRefused) as refused:
        fresh_sqlite(str(notes))
    assert refused.value.code == 2 and str(notes) in str(refused.value)
    assert notes.read_text() == "not a database\n"


def test_claim_windows_that_would_take_a_live_call_for_dead_are_refused_before_anything_starts(
    tmp_path: Path,
) -> None:
    """A dead-after window not longer than the call timeout: exit 2, with the claim's own
    reason, before any process starts. Checked by dropping the window check from preflight:
    the test fails (nothing raised)."""
    argv = ["--atomic-claim", "--port", str(free_port()), "--db", str(tmp_path / "w.db")]
    with pytest.raises(RunRefused) as refused:
        preflight(sample.parse_args([*argv, "--dead-after", "10", "--call-timeout", "10"]))
    assert refused.value.code == 2 and "is taken for dead" in str(refused.value)
    preflight(sample.parse_args([*argv, "--dead-after", "15", "--call-timeout", "10"]))


# --- 2. settings that got through ------------------------------------------------------------


def test_a_dotted_quad_that_is_no_ipv4_address_is_refused_and_host_names_still_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """DEMO_API_HOST=256.1.1.1 passed as a host name: sample.py then said "port ... already in
    use" (exit 1). Now one line naming the variable, exit 2, nothing started.
    Checked by removing the dotted-quad check from settings._host: the test fails (exit 1,
    "already in use")."""
    host = settings.KNOBS["DEMO_API_HOST"].parse
    for fits in ("127.0.0.1", "localhost", "api.example.com", "my-host", "::1", "10.0.0.255"):
        assert host(fits) == fits
    for bad in ("256.1.1.1", "1.2.3.999", "01.2.3.4"):
        with pytest.raises(ValueError, match="IPv4"):
            host(bad)
    monkeypatch.setenv("DEMO_API_HOST", "256.1.1.1")
    monkeypatch.setenv("DEMO_LOG_DIR", str(tmp_path / "logs"))
    with pytest.raises(SystemExit) as exited:
        sample.main(["--port", str(free_port()), "--db", str(tmp_path / "demo.db")])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    one_line(err, "sample.py:", "DEMO_API_HOST='256.1.1.1'", "IPv4")
    assert "already in use" not in err
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize(
    "argv",
    [["enqueue.py", "all"], ["-m", "pynenc", "--app", "tasks.app", "runner", "start"]],
    ids=["enqueue.py", "worker"],
)
def test_the_enqueuer_and_a_worker_refuse_the_bad_host_in_one_line(
    tmp_path: Path, argv: list[str]
) -> None:
    """Both gave an httpx.InvalidURL traceback. Now enqueue.py says so in one line, exit 2; a
    worker in pynenc's one line for an app it cannot build, exit 1. Checked by removing the
    dotted-quad check from settings._host: the test fails for both (a traceback)."""
    env = {**user_env(tmp_path), "DEMO_API_HOST": "256.1.1.1", "DEMO_DB": str(tmp_path / "x.db")}
    result = subprocess.run(
        [sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == (1 if "pynenc" in argv else 2), result.stdout + result.stderr
    one_line(result.stderr, "DEMO_API_HOST='256.1.1.1'", "IPv4")


FULL_WIDTH = [
    ["--port", "８７６５"],
    ["--workers", "２"],
    ["--rounds", "３"],
    ["--accounts", "３"],
    ["--ops", "４"],
    ["--backlog", "２０"],
    ["--bench-accounts", "３０"],
    ["--hold", "０.４"],
    ["--timeout", "６０"],
]


@pytest.mark.parametrize("argv", FULL_WIDTH, ids=[a[0] for a in FULL_WIDTH])
def test_a_number_in_a_flag_takes_ascii_digits_only(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """`--port ８７６５` was port 8765: str.isdigit, int() and float() read full-width digits.
    Checked by putting raw.isdigit() back in settings._port, plain int() in whole_number and
    plain float() in number: each makes the test fail (--port parsed as 8765; --workers,
    --rounds, --accounts, --ops, --backlog, --bench-accounts; --hold, --timeout)."""
    with pytest.raises(SystemExit) as exited:
        (bench_args if argv[0].startswith(("--bench", "--rounds")) else sample.parse_args)(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {argv[0]}: {argv[1]!r}: expected" in err, err


@pytest.mark.parametrize("name", ["DEMO_API_PORT", "DEMO_TIMEOUT", "DEMO_READY_TIMEOUT"])
def test_a_number_in_a_variable_takes_ascii_digits_only(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """DEMO_API_PORT=８７６５ was port 8765. Checked by putting raw.isdigit() back in
    settings._port, and plain float() in number: the test fails (no problem found)."""
    monkeypatch.setenv(name, "６０")
    (problem,) = settings.problems()
    assert problem.startswith(f"{name}='６０': expected"), problem
    monkeypatch.setenv(name, "60")
    assert settings.problems() == []


def test_ascii_numbers_still_fit() -> None:
    args = sample.parse_args(["--port", "19100", "--workers", "2", "--hold", "0.4"])
    assert (args.port, args.workers, args.hold) == (19100, 2, 0.4)


@pytest.mark.parametrize("backlogs", ["a", "-5", "0", "20,x", "100001"])
def test_bench_backlogs_are_read_as_the_flags_are_parsed(
    capsys: pytest.CaptureFixture[str], backlogs: str
) -> None:
    """`--bench-backlogs a` failed only after the whole bench, `=-5` printed "0 calls at nan%"
    and exit 0. Now a usage error, exit 2, before anything runs.
    Checked by dropping the flag's type= in tools/bench.py: the test fails (parsed, no exit)."""
    with pytest.raises(SystemExit) as exited:
        bench_args([f"--bench-backlogs={backlogs}"])
    assert exited.value.code == 2
    assert f"argument --bench-backlogs: '{backlogs}': expected backlogs" in capsys.readouterr().err


def test_bench_backlogs_that_fit_are_numbers() -> None:
    assert bench_args([]).bench_backlogs == [1000]  # the long one on request
    assert bench_args(["--bench-backlogs", "1000,10000"]).bench_backlogs == [1000, 10000]
    assert bench_args(["--bench-backlogs", "20"]).bench_backlogs == [20]
    assert bench_args(["--bench-backlogs", ""]).bench_backlogs == []  # no E runs
    assert bench_args([]).rounds == bench.ROUNDS


def test_f_and_g_need_the_claim_that_enforces_them(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """sample.py --limits without --atomic-claim would run F and G on stock pynenc, which has
    no N per key and no rate: refused in one line, before anything starts."""
    monkeypatch.delenv("DEMO_ATOMIC_CLAIM", raising=False)
    with pytest.raises(SystemExit) as refused:
        sample.parse_args(["--limits"])
    assert refused.value.code == 2
    assert "--limits needs --atomic-claim" in capsys.readouterr().err
    assert sample.parse_args(["--limits", "--atomic-claim"]).limits
