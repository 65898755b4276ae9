"""A key's limit changed while running: an operator's override, kept in the store.

`set_limit(app, task, {"account_id": "acme"}, slots=2)` puts the key's slots (and rate, per)
over what its task declares (keyclaim.limit, or its rule); `clear_limit` takes it away, and
the task's own limit applies again. Each claim step reads it in the transaction that admits a
call (`sqlite_limit`, `redis_limit`), so every process obeys it from its next step. The
setter's own step, on the key's holders and line:
- raised: the slots it frees go to the calls waiting in the line, queued at once, as a
  hand-over queues them;
- lowered below the calls in flight: no one is stopped or fenced; a call that holds a slot but
  has not started gives it back and waits at the head of the line, and a release hands its
  slot on only while the key is below its limit (`has_room`), so none is admitted until then.
An override is an operator's row (SQLite: one of `{p}_key_limits`; Redis: one field of a
hash), one per key overridden, kept until it is cleared: it does not grow with the calls.

    python -m keyclaim limit set --app tasks.app --task call_keyed account_id=acme --slots 2
"""

import argparse
import importlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import astuple, dataclass, replace
from typing import TYPE_CHECKING, Any

from keyclaim import keys, limits
from keyclaim.decision import HELD, Holder
from keyclaim.errors import Refused

if TYPE_CHECKING:
    from pynenc import Pynenc


HASH = "key_limits"  # Redis: the hash of overrides, one field per key's line


@dataclass(frozen=True)
class Override:
    """An operator's slots, rate and period for one key; None: the task's own."""

    slots: int | None = None
    rate: int | None = None
    per: float | None = None

    def over(self, own: limits.Limit) -> limits.Limit:
        rate = own.rate if self.rate is None else self.rate
        return replace(own, slots=self.slots or own.slots, rate=rate, per=self.per or own.per)


def set_limit(
    app: "Pynenc",
    task: Any,
    values: Mapping[str, object],
    *,
    slots: int | None = None,
    rate: int | None = None,
    per: float | None = None,
) -> int:
    """Override the limit of the task's key (its key arguments' values) in the store; how
    many waiting calls it started."""
    if why := limits.problem(1 if slots is None else slots, rate, 1.0 if per is None else per, 0):
        raise Refused(f"keyclaim.overrides: {why}")
    return _apply(app, task, values, Override(slots, rate, None if per is None else float(per)))


def clear_limit(app: "Pynenc", task: Any, values: Mapping[str, object]) -> int:
    """The task's own limit for the key again; how many waiting calls it started."""
    return _apply(app, task, values, None)


def read(app: "Pynenc", lines: Iterable[str] | None = None) -> dict[str, Override]:
    """The overrides in force, by line (keyclaim.keys.line_key), or those of these lines."""
    orchestrator = _claim(app)
    if orchestrator.BACKEND == "sqlite":
        with orchestrator._connect() as conn:
            rows = conn.execute(f"SELECT * FROM {orchestrator.key_limits}").fetchall()
        found = {line: Override(*fields) for line, *fields in rows}
    else:
        raw = orchestrator.client.hgetall(orchestrator._k(HASH))
        found = {line.decode(): Override(*json.loads(fields)) for line, fields in raw.items()}
    return found if lines is None else {line: found[line] for line in lines if line in found}


def held(app: "Pynenc", task: Any, values: Mapping[str, object]) -> int:
    """How many calls hold the key's slots now (started, or admitted and about to)."""
    orchestrator, (line, _) = _claim(app), line_of(task, values)
    if orchestrator.BACKEND == "redis":
        return int(orchestrator.client.hlen(orchestrator._k("slots", line)))
    with orchestrator._connect() as conn:
        holders = f"SELECT COUNT(*) FROM {orchestrator.holders} WHERE line_key = ?"
        return int(conn.execute(holders, (line,)).fetchone()[0])


def line_of(task: Any, values: Mapping[str, object]) -> tuple[str, dict[str, str]]:
    """The task's line for these key values (text, or JSON values), and its serialized key."""
    names = tuple(task.conf.key_arguments)
    if not names or set(values) != set(names):
        raise Refused(
            f"keyclaim.overrides: {task.task_id.key}'s key is {list(names)}, not {sorted(values)}"
        )
    key = {name: json.dumps(values[name]) for name in names}
    return keys.task_line(task, key), key


def sqlite_limit(orchestrator: Any, conn: Any, invocation: Any, line: str) -> limits.Limit:
    """The invocation's limit, its key's override read in the claim step's transaction (and
    left on the invocation, for `decide` and `admits` in the same step)."""
    setattr(invocation, limits.OVERRIDE, _sqlite_override(orchestrator, conn, line))
    return limits.of(invocation)


def redis_limit(orchestrator: Any, pipe: Any, invocation: Any, line: str) -> limits.Limit:
    """The same on Redis: the hash is watched, so a change before EXEC makes the step again."""
    setattr(invocation, limits.OVERRIDE, _redis_override(orchestrator, pipe, line))
    return limits.of(invocation)


def sqlite_has_room(orchestrator: Any, conn: Any, line: str, head: str) -> bool:
    """Whether a holder's release may hand its slot to the head of the line: only while the
    others are fewer than the head's limit (lowered, it may be below them). Alone, at once."""
    holders = f"SELECT COUNT(*) FROM {orchestrator.holders} WHERE line_key = ?"
    (holding,) = conn.execute(holders, (line,)).fetchone()  # the releasing holder among them
    override = _sqlite_override(orchestrator, conn, line) if holding > 1 else None
    return holding <= 1 or holding - 1 < _limit_of(orchestrator, head, override).slots


def redis_has_room(orchestrator: Any, pipe: Any, line: str, head: str) -> bool:
    """The same on Redis, inside the release's watched read."""
    holding = pipe.hlen(orchestrator._k("slots", line))
    override = _redis_override(orchestrator, pipe, line) if holding > 1 else None
    return holding <= 1 or holding - 1 < _limit_of(orchestrator, head, override).slots


def _limit_of(orchestrator: Any, invocation_id: str, override: Override | None) -> limits.Limit:
    invocation = orchestrator.app.state_backend.get_invocation(invocation_id)
    setattr(invocation, limits.OVERRIDE, override)
    return limits.of(invocation)


def _sqlite_override(orchestrator: Any, conn: Any, line: str) -> Override | None:
    row = conn.execute(
        f"SELECT slots, rate, per FROM {orchestrator.key_limits} WHERE line_key = ?", (line,)
    ).fetchone()
    return None if row is None else Override(*row)


def _redis_override(orchestrator: Any, pipe: Any, line: str) -> Override | None:
    pipe.watch(orchestrator._k(HASH))
    raw = pipe.hget(orchestrator._k(HASH), line)
    return None if raw is None else Override(*json.loads(raw))


def _claim(app: "Pynenc") -> Any:
    from keyclaim.orchestrator import AtomicClaim

    if not isinstance(app.orchestrator, AtomicClaim):
        raise Refused("keyclaim.overrides: the app runs without the claim, which reads them")
    return app.orchestrator


def _apply(app: "Pynenc", task: Any, values: Mapping[str, object], new: Override | None) -> int:
    orchestrator, (line, key) = _claim(app), line_of(task, values)
    slots = limits.for_key(task.task_id.key, key, new).slots
    apply = _sqlite_apply if orchestrator.BACKEND == "sqlite" else _redis_apply
    started = apply(orchestrator, line, slots, new)
    if started:  # one worker for each call it queued, wherever it runs (keyclaim.notify)
        orchestrator.notify(0.0, started)
    return started


def _free(holders: list[Holder], slots: int) -> list[int]:
    """Raised above its holders: the slots the calls waiting in its line may take now."""
    free = sorted(set(range(slots)) - {h.slot for h in holders})
    return free[: max(0, slots - len(holders))]


def _given_back(holders: list[Holder], slots: int) -> list[Holder]:
    """Lowered below its holders: those not started yet give their slots back, last first."""
    unstarted = sorted((h for h in holders if h.record.status not in HELD), key=lambda h: -h.slot)
    return unstarted[: max(0, len(holders) - slots)]


def _sqlite_apply(orchestrator: Any, line: str, slots: int, new: Override | None) -> int:
    o, queue = orchestrator, orchestrator.app.broker.tables.QUEUE
    with o._connect() as conn:
        o._begin(conn)
        conn.execute(f"DELETE FROM {o.key_limits} WHERE line_key = ?", (line,))
        if new is not None:
            conn.execute(f"INSERT INTO {o.key_limits} VALUES (?, ?, ?, ?)", (line, *astuple(new)))
        holders = o._holders(conn, line)
        free = _free(holders, slots)
        heads = conn.execute(
            f"SELECT seq, invocation_id FROM {o.lines} WHERE line_key = ? ORDER BY seq LIMIT ?",
            (line, len(free)),
        ).fetchall()
        for slot, (seq, head) in zip(free, heads, strict=False):
            conn.execute(f"DELETE FROM {o.lines} WHERE seq = ?", (seq,))
            o._hold(conn, line, slot, head)
            o._queue(conn, head)
        for back in _given_back(holders, slots):
            for table in (o.holders, o.dues, queue):
                conn.execute(f"DELETE FROM {table} WHERE invocation_id = ?", (back.invocation_id,))
            conn.execute(
                f"INSERT INTO {o.lines} (seq, line_key, invocation_id) "
                f"SELECT COALESCE(MIN(seq), 1) - 1, ?, ? FROM {o.lines}",
                (line, back.invocation_id),
            )
        conn.commit()
    return len(heads)


def _redis_apply(orchestrator: Any, line: str, slots: int, new: Override | None) -> int:
    o, queue = orchestrator, orchestrator.app.broker.key.default_queue()

    def step(pipe: Any) -> int:
        pipe.watch(o._k(HASH), o._k("line", line))  # its heads are read here
        holders = o._holders(pipe, line)  # watches the key's slots
        free = _free(holders, slots)
        waiting = pipe.lrange(o._k("line", line), 0, len(free) - 1) if free else []
        heads = [head.decode() for head in waiting]
        pipe.multi()
        if new is None:
            pipe.hdel(o._k(HASH), line)
        else:
            pipe.hset(o._k(HASH), line, json.dumps(astuple(new)))
        for slot, head in zip(free, heads, strict=False):
            pipe.lpop(o._k("line", line))
            pipe.delete(o._k("parked", head))
            o._hold(pipe, line, slot, head)
            pipe.rpush(queue, head)
        for back in _given_back(holders, slots):
            gone = back.invocation_id
            pipe.hdel(o._k("slots", line), str(back.slot))
            pipe.delete(o._k("holds", gone), o._k("slot", gone))
            pipe.srem(o._k("holders"), gone)
            pipe.lrem(queue, 0, gone)
            pipe.zrem(o._k("dues"), gone)
            pipe.lpush(o._k("line", line), gone)
            pipe.set(o._k("parked", gone), line)
        return len(heads)

    started, failed = o._transaction(step)
    if started is None:
        raise Refused(f"keyclaim.overrides: {line} kept changing, {failed} tries: try again")
    return started


def main(argv: list[str] | None = None) -> None:
    """The command line: refused in one line, with exit status 2 (argparse's own)."""
    parser = argparse.ArgumentParser(
        prog="python -m keyclaim limit", description="A key's limit, changed while running."
    )
    parser.add_argument("action", choices=("set", "clear", "show"))
    parser.add_argument("--app", required=True, help="the app: module.attribute")
    parser.add_argument("--task", help="the task, by its name in the app's module")
    parser.add_argument("key", nargs="*", help="the key's values: name=value ...")
    parser.add_argument("--slots", type=int)
    parser.add_argument("--rate", type=int)
    parser.add_argument("--per", type=float)
    args = parser.parse_intermixed_args(argv)
    module_name, _, name = args.app.rpartition(".")
    module = importlib.import_module(module_name)
    app = getattr(module, name)
    try:
        if args.action == "show":
            for line, override in read(app).items():
                print(f"{line}  {override}")
            return
        if args.task is None:
            parser.error(f"{args.action}: --task names the task whose key it is")
        task, values = getattr(module, args.task), dict(v.partition("=")[::2] for v in args.key)
        if args.action == "set":
            started = set_limit(app, task, values, slots=args.slots, rate=args.rate, per=args.per)
        else:
            started = clear_limit(app, task, values)
    except Refused as refused:
        parser.exit(2, f"{refused}\n")
    print(f"{args.action} {line_of(task, values)[0]}: {started} waiting calls started")
