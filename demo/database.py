"""The demo's SQLite file: whether SQLite can create it, and whether a run may delete it.

A run starts by deleting its database, so that no invocation of an earlier run leaks in: it
deletes a file only when it is new, empty, or this demo's pynenc database (demo/stack.py).
"""

import hashlib
import os
import shutil
import sqlite3
import tempfile
from contextlib import closing
from pathlib import Path

# This demo's tables: pynenc 0.3.1 names every one (broker, orchestrator, state backend,
# triggers, client data) {app_id}_{8 hex of sha256(app_id)}__{component}_... (sqlite_utils), and
# the atomic claim's share the orchestrator's prefix. tasks.py's app_id is this one.
APP_ID = "concurrency_demo"
TABLE_PREFIX = f"{APP_ID}_{hashlib.sha256(APP_ID.encode()).hexdigest()[:8]}__"
SQLITE_HEADER = b"SQLite format 3\x00"


def problem(path: str) -> str | None:
    """Why SQLite could not create or open the database at path, or None."""
    db = Path(path)
    if db.is_dir():
        return f"{path} is a folder, not a database file"
    folder = db.parent if str(db.parent) else Path(".")
    if not folder.is_dir():
        return f"its folder {folder} does not exist"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"its folder {folder} is not writable"
    return None


def not_ours(path: str) -> str | None:
    """Why the file at path is not one a run may delete, or None: no file, an empty one, or
    this demo's pynenc database (every table in it named with TABLE_PREFIX).

    Read without a write: the file, and any -wal or -shm beside it, stay byte for byte as they
    were (a read-only connection would still create or rewrite the -shm).
    """
    wal = Path(path + "-wal")
    try:
        with open(path, "rb") as db:
            header = db.read(len(SQLITE_HEADER))
        in_wal = wal.is_file() and wal.stat().st_size > 0
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"it cannot be read ({exc.strerror})"
    if not header and not in_wal:
        return None
    if header and header != SQLITE_HEADER:
        return "it is not a SQLite database"
    try:
        # The file alone, its WAL unread: immutable=1 writes nothing beside it.
        tables = _tables(Path(path).resolve().as_uri() + "?mode=ro&immutable=1")
        if not tables and in_wal:  # a new database whose tables are all in its WAL so far:
            # read with the WAL applied, from a copy of the two (the originals stay)
            with tempfile.TemporaryDirectory(prefix="demo-db-") as folder:
                copy = Path(folder) / "copy.db"
                shutil.copyfile(path, copy)
                shutil.copyfile(path + "-wal", f"{copy}-wal")
                tables = _tables(copy.as_uri())
    except sqlite3.DatabaseError as exc:
        return f"SQLite cannot read it ({exc})"
    if not tables:
        return "it is a SQLite database without this demo's pynenc tables"
    if others := sorted(t for t in tables if not t.startswith(TABLE_PREFIX)):
        shown = ", ".join(repr(t) for t in others[:3]) + (" ..." if len(others) > 3 else "")
        return f"it is a SQLite database with tables that are not this demo's pynenc ones: {shown}"
    return None


def _tables(uri: str) -> set[str]:
    with closing(sqlite3.connect(uri, uri=True)) as conn:
        rows = conn.execute("SELECT tbl_name FROM sqlite_master").fetchall()
    return {name for (name,) in rows if not name.startswith("sqlite_")}  # SQLite's own


def delete(path: str) -> None:
    """The database and the files SQLite keeps beside it."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(path + suffix).unlink(missing_ok=True)
