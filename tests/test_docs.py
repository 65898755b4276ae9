"""The README and docs/ say what the code does: the configuration page against `--help` and the
knobs, the README's size and its two commands, and every link to a page that exists."""

import re
import sys
from collections.abc import Callable

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


def block_after(heading: str, text: str) -> str:
    return text.split(heading, 1)[1].split("```\n", 1)[1].split("\n```", 1)[0]


@pytest.mark.parametrize(
    "script, main", [("sample.py", sample.parse_args), ("enqueue.py", enqueue.main)]
)
def test_the_configuration_page_shows_each_scripts_help_as_it_is(
    script: str,
    main: Callable[[list[str]], object],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    shown = block_after(f"## `{script} --help`", CONFIGURATION.read_text())
    now = help_of(script, main, monkeypatch, capsys)
    assert shown == now, (
        f"docs/configuration.md: paste `COLUMNS={WIDTH} uv run python {script} --help`"
    )


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
