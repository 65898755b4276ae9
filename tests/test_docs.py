"""The README and docs/ say what the code does, and each module says its one job.

The configuration page against `--help` and the knobs, the README's size and its two
commands, every link to a page that exists, first lines and class names."""

import ast
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import enqueue
import sample
from demo import settings
from demo.stack import ROOT

CONFIGURATION = ROOT / "docs" / "configuration.md"
WIDTH = "100"  # COLUMNS the page's --help blocks were made at


def help_of(
    script: str, main: Callable[[list[str]], object], monkeypatch: pytest.MonkeyPatch, capsys
) -> str:
    monkeypatch.setattr(sys, "argv", [script])
    monkeypatch.setenv("COLUMNS", WIDTH)
    with pytest.raises(SystemExit):
        main(["--help"])
    return capsys.readouterr().out.rstrip("\n")


def test_the_configuration_page_shows_each_scripts_help_as_it_is() -> None:
    """cog remakes the page's --help blocks from the scripts (tools/docs.py) and compares."""
    checked = subprocess.run(
        [sys.executable, "-m", "cogapp", "-I", ".", "--check", str(CONFIGURATION)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert checked.returncode == 0, (
        f"{checked.stdout}{checked.stderr}\nremake them: uv run cog -I . -r docs/configuration.md"
    )
    for script in ("sample.py", "enqueue.py", "python -m tools.bench"):
        assert f"usage: {script} [-h]" in CONFIGURATION.read_text(), script


def test_the_configuration_page_has_every_knob_with_its_default_and_flag(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    page = CONFIGURATION.read_text()
    row = r"^\| `(\w+)` \|\s*([^|]*?)\s*\|\s*([^|]*?)\s*\|"
    table = {name: (default, flag) for name, default, flag in re.findall(row, page, re.M)}
    assert set(table) == set(settings.KNOBS), "one row per knob in demo/settings.py"
    for name, knob in settings.KNOBS.items():
        assert table[name][0] == (f"`{knob.default}`" if knob.default else "(none)"), name

    # The flag beside each variable is the one whose help says it sets that variable.
    helps = help_of("sample.py", sample.parse_args, monkeypatch, capsys)
    helps += "\n" + help_of("enqueue.py", enqueue.main, monkeypatch, capsys)
    flags: dict[str, str] = {}
    for option in re.split(r"\n(?=  -)", helps):
        if m := re.search(r"\(env\s+(\w+)", option):
            flags[m.group(1)] = option.split()[0]
    assert {name: flag.strip("`") for name, (_, flag) in table.items() if flag} == flags


def test_every_flag_of_the_scripts_is_on_the_configuration_page(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    page = CONFIGURATION.read_text()
    tables = page.split("## `sample.py --help`")[0]
    helps = help_of("sample.py", sample.parse_args, monkeypatch, capsys)
    options = set(re.findall(r"^  (--[\w-]+)", helps, re.M)) - {"--help"}
    assert options, helps
    assert {o for o in options if f"`{o}`" not in tables} == set()


def test_the_readme_is_a_front_door() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 12_000
    assert "uv run python sample.py" in readme and "uv run pytest" in readme
    # The file map names every module of the demo package.
    files = readme.split("## The files", 1)[1]
    modules = {p.name for p in (ROOT / "demo").glob("*.py")} - {"__init__.py"}
    assert {m for m in modules if f" {m} " not in files} == set()


@pytest.mark.parametrize(
    "page", ["README.md", *(f"docs/{p.name}" for p in sorted((ROOT / "docs").glob("*.md")))]
)
def test_every_relative_link_points_at_a_file_that_exists(page: str) -> None:
    path = ROOT / page
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
        if "://" not in target:
            assert (path.parent / target).exists(), f"{page} links to {target}"


def python_files() -> list[Path]:
    """The project's own modules: the four files, the harness, the tools, the library."""
    tops = [ROOT / n for n in ("api_server.py", "tasks.py", "enqueue.py", "sample.py")]
    folders = ("stand_in", "demo", "tools", "keyclaim/src/keyclaim", "tests", "keyclaim/tests")
    return tops + [p for folder in folders for p in sorted((ROOT / folder).glob("*.py"))]


def test_each_module_says_its_one_job_in_its_first_line_and_each_class_has_a_name_of_its_own() -> (
    None
):
    """A module's docstring opens with one whole sentence; no two classes share a name."""
    classes: dict[str, list[str]] = {}
    for path in python_files():
        tree = ast.parse(path.read_text())
        where = str(path.relative_to(ROOT))
        doc = ast.get_docstring(tree, clean=False) or ""
        if path.name not in ("__init__.py", "conftest.py") or doc:
            first = doc.split("\n", 1)[0]
            assert first.endswith(".") and first[:1].isupper(), f"{where}: {first!r}"
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                classes.setdefault(node.name, []).append(where)
    assert {name: at for name, at in classes.items() if len(at) > 1} == {}
