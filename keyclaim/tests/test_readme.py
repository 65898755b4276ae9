"""The README's Python blocks, run as written in a folder of their own, as a new user would."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"  # the library's own


def blocks() -> tuple[str, list[str]]:
    """billing.py (the first block, and each later one that does not start with an import,
    in order), and the programs of their own (each block that starts with an import)."""
    found = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    first, *rest = found
    starts_a_program = re.compile(r"(import|from) \S")
    module = [first, *(b for b in rest if not starts_a_program.match(b))]
    return "\n\n".join(module), [b for b in rest if starts_a_program.match(b)]


def run(code: str, folder: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, code + done.stderr
    return done.stdout


def test_every_python_block_of_the_readme_runs_and_a_busy_accounts_next_call_waits(
    tmp_path: Path,
) -> None:
    """Each block runs with nothing but what the README shows: billing.py builds its app and
    tasks on a database in the folder, the provider's side checks itself, and the producer's
    second charge for a busy account waits in its line (it prints 1). pynenc's tasks drop a
    blocked call unless reroute_on_concurrency_control is set (its default is False in 0.3.1
    and 0.4.0). Checked by mutation: with that option left out of the block, the second charge
    was dropped (CONCURRENCY_CONTROLLED_FINAL) and the producer printed 0."""
    module, programs = blocks()
    assert len(programs) >= 3  # the producer, the provider's side, kept connections
    (tmp_path / "billing.py").write_text(module)
    run("import billing", tmp_path)
    printed = {program: run(program, tmp_path) for program in programs}
    (producer,) = [p for p in programs if "waiting(app)" in p]
    assert printed[producer].splitlines()[-1] == "1", printed[producer]
    assert (tmp_path / "billing.db").is_file()
