"""The bench's last table: every figure docs/speed.md's targets name, stock pynenc beside the claim.

Beside what tools/bench_lines.py's sides printed (B on 3 workers, D's calls over its rounds on 1
and 3), two figures other commands measure, each in processes of its own: the start-up of
`uv run python sample.py` (its --start-up line: from the command to the first enqueue), and, on
request (--bench-many N), B at N accounts x 4 ops, hold 0.05 s, 4 workers on SQLite and on Redis,
as `python -m tools.stress` runs it: stock pynenc, and the claim with its calls enqueued one by
one (as the article does) and as one batch (`--batch`: the claim registers it in one transaction
on SQLite).
"""

import argparse
import importlib.util
import os
import re
import statistics
import subprocess
from pathlib import Path

from demo.processes import free_port
from demo.scenarios import Shape
from demo.stack import ROOT

MANY = Shape(accounts=500, ops=4, hold=0.05, workers=4)
RUN_DEADLINE = 1800.0
REDIS = ("--isolated", "--group", "redis")  # the plugin, in an environment of uv's own
STARTS = re.compile(r"^start-up: ([\d.]+)s .*?([\d.]+) CPU-seconds", re.M)
B_ROW = re.compile(r"^B\. keyed\s+([\d.]+)s\s+[\d.]+s\s+(\d+%)", re.M)
B_CPU = re.compile(r"^  B\. keyed: CPU per call, ms: .*$", re.M)  # --cpu's line


def _run(argv: list[str], log: Path) -> str:
    """argv from the project's folder, as a user would type it: the article's settings, none of
    the bench's (DEMO_*, REDIS_URL); its output, also kept in `log`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEMO_") and k != "REDIS_URL"}
    env["DEMO_LOG_DIR"] = str(log.with_suffix(""))
    done = subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=RUN_DEADLINE
    )
    log.write_text(done.stdout + done.stderr)
    return done.stdout


def start_ups(args: argparse.Namespace, log_dir: Path) -> list[tuple[float, float]]:
    """`uv run python sample.py`, --bench-starts times: each one's seconds from the command to
    its first enqueue, and the CPU-seconds it and its children took to be ready."""
    found = []
    for n in range(1, args.bench_starts + 1):
        argv = ["uv", "run", "python", "sample.py", "--start-up", "--no-chart", "--no-links"]
        argv += ["--hold", str(args.hold), "--port", str(free_port())]
        argv += ["--db", str(log_dir / f"start-up-{n}.db")]
        if figures := STARTS.search(_run(argv, log_dir / f"start-up-{n}.log")):
            found.append((float(figures[1]), float(figures[2])))
    return found


def many(args: argparse.Namespace, log_dir: Path) -> dict[str, str]:
    """B at --bench-many accounts on MANY.workers workers, stock pynenc and the claim, on each
    backend: its elapsed and efficiency as tools.stress prints them, and its collisions."""
    found = {}
    for backend in ("sqlite", "redis"):
        claimed = ["--atomic-claim", "--runner", "wake", "--cpu"]  # as the bench's claim runs
        batched = ("claim, enqueued as one batch", [*claimed, "--batch"])
        for side, claim in (("stock pynenc", []), ("claim, wake runner", claimed), batched):
            argv = ["uv", "run", *(REDIS if backend == "redis" else ()), "python", "-m"]
            argv += ["tools.stress", *claim, "--backend", backend, "--rounds", "1"]
            argv += ["--accounts", str(args.bench_many), "--ops", str(MANY.ops)]
            argv += ["--hold", str(MANY.hold), "--workers", str(MANY.workers)]
            name = f"many-{backend}-{side.split()[0]}{'-batch' * ('--batch' in claim)}"
            argv += ["--no-chart", "--no-links", "--port", str(free_port())]
            out = _run([*argv, "--db", str(log_dir / f"{name}.db")], log_dir / f"{name}.log")
            row, collided = B_ROW.search(out), re.search(r"^totals: (\d+) collisions", out, re.M)
            text = f"{row[1]}s ({row[2]})" if row else "no figure"
            if collided and int(collided[1]):
                text += f", {collided[1]} collisions"
            if cpu := B_CPU.search(out):
                text += f", CPU per call, ms: {cpu[0].split(': ', 2)[2]}"
            found[f"{backend} {side}"] = text
    return found


def cached() -> bool:
    """Whether the provider's FastAPI loads from bytecode: without it (PYTHONDONTWRITEBYTECODE=1
    and no `uv sync --compile-bytecode`), each process compiles its imports, about half of the
    start-up's CPU (docs/speed.md)."""
    origin = importlib.util.find_spec("fastapi").origin  # type: ignore[union-attr]
    return Path(importlib.util.cache_from_source(str(origin))).exists()


def table(
    sides: dict[str, dict[str, object]],
    starts: list[tuple[float, float]],
    many_runs: dict[str, str],
    accounts: int,
) -> str:
    """The figures no other table prints, sides as columns where a side has them."""

    def elapsed(value: object) -> str:
        median, floor = value  # type: ignore[misc]
        return f"{median:.2f}s ({floor / median:.0%})"

    def calls(value: object) -> str:
        low, typical, high, _ = value  # type: ignore[misc]
        return f"{low}/{typical}/{high}"

    rounds = next((s["D calls"][3] for s in sides.values() if "D calls" in s), 0)  # type: ignore[index]
    rows = []
    for key, name, shown in (
        ("B 3 workers", "B. keyed, 3 workers", elapsed),
        ("D calls", f"D: calls in {rounds} rounds, min/typ/max", calls),
        ("D calls 3 workers", "D: the same, 3 workers", calls),
    ):
        rows.append((name, *(shown(s[key]) if key in s else "-" for s in sides.values())))
    head = f"{'':<40}" + "".join(f"{name:>17}" for name in sides)
    lines = ["", "=== the rest of the targets, wake runner ===", head]
    lines += [f"{row[0]:<40}" + "".join(f"{cell:>17}" for cell in row[1:]) for row in rows]
    if starts:
        seconds, cpu = sorted(s for s, _ in starts), statistics.median(c for _, c in starts)
        lines.append(
            f"start-up of `uv run python sample.py`, command to first enqueue, {len(starts)} "
            f"runs: {seconds[0]:.2f}/{statistics.median(seconds):.2f}/{seconds[-1]:.2f}s "
            f"(min/typical/max), {cpu:.2f} CPU-seconds typical; load {os.getloadavg()[0]:.1f}; "
            + ("bytecode cached" if cached() else "no bytecode cache: each start compiles")
        )
    for run, text in many_runs.items():
        shape = f"{accounts} accounts x {MANY.ops}, hold {MANY.hold}s, {MANY.workers} workers"
        lines.append(f"B at {shape}, {run}: {text}")
    return "\n".join(lines)
