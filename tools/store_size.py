"""How big pynenc's store is now, and the claim's part of it: the soak's and the sizes' readings.

SQLite: the file with its -wal, and the rows of each table, pynenc's and the claim's. Redis:
`INFO memory`'s used_memory, DBSIZE, and the entries of the claim's keys (its hashes' fields,
its lines' and sets' members), each kind summed. A reading is two dicts of counts: a few
totals for a row, and the detail behind them.
"""

import sqlite3
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from pynenc.util.sqlite_utils import sanitize_table_prefix

if TYPE_CHECKING:
    from pynenc import Pynenc

# The claim's tables under pynenc's table prefix (keyclaim.sqlite_tables, keyclaim.fleet), and
# its Redis keys under pynenc's key prefix by their first part (keyclaim.redis_keys' _k): the
# library's inside, named here since it shows only its face (tests/test_keyclaim_face.py).
CLAIM_TABLES = ("key_slots", "key_admitted", "key_dues", "key_lines", "fence_counters")
CLAIM_TABLES += ("claimed", "claim_stats", "claim_beats", "claim_fleet")
CLAIM_KEYS = ("fences", "fence", "claimed_at", "beats", "claim_stats", "claim_fleet", "dues")
CLAIM_KEYS += ("slots", "slot", "line", "admitted", "holders", "holds", "parked")


def reading(app: "Pynenc") -> tuple[dict[str, int], dict[str, int]]:
    """(totals, detail) of the app's store now."""
    if hasattr(app.orchestrator, "sqlite_db_path"):
        return _sqlite(Path(app.orchestrator.sqlite_db_path), sanitize_table_prefix(app.app_id))
    return _redis(app)


def _sqlite(db: Path, prefix: str) -> tuple[dict[str, int], dict[str, int]]:
    size = sum(p.stat().st_size for p in (db, db.with_name(db.name + "-wal")) if p.exists())
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        names = [n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        rows = {n: conn.execute(f'SELECT COUNT(*) FROM "{n}"').fetchone()[0] for n in names}
    conn.close()
    claim = {n for n in names if n.endswith(tuple(f"_{t}" for t in CLAIM_TABLES))}
    totals = {"file bytes": size, "pynenc rows": 0, "claim rows": 0}
    for name, count in rows.items():
        totals["claim rows" if name in claim else "pynenc rows"] += count
    return totals, {n.removeprefix(f"{prefix}__"): c for n, c in rows.items() if c}


def _redis(app: "Pynenc") -> tuple[dict[str, int], dict[str, int]]:
    client, prefix = app.orchestrator.client, app.orchestrator.key.prefix  # type: ignore[attr-defined]
    detail: Counter[str] = Counter()
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        kind = key.decode()[len(prefix) :].split(":")[0]
        if kind in CLAIM_KEYS:
            size = {b"hash": client.hlen, b"list": client.llen, b"zset": client.zcard}
            detail[kind] += size.get(client.type(key), lambda _: 1)(key)
    totals = {"used_memory": client.info("memory")["used_memory"], "dbsize": client.dbsize()}
    return totals | {"claim entries": sum(detail.values())}, dict(detail)


def line(totals: dict[str, int]) -> str:
    return "  ".join(f"{name} {value:>11,}" for name, value in totals.items())
