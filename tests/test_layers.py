"""The layers run one way, and no import circle anywhere.

The sample sits on the harness, the harness on keyclaim, the tools on the harness: no module
imports its way back up."""

import ast
from pathlib import Path

import pytest

from demo.stack import ROOT

pytestmark = pytest.mark.unit  # no process, no network: the source, read

# The sample: the article's four files, and the package beside them that only they import.
SAMPLE = {"tasks", "api_server", "enqueue", "sample", "stand_in"}
LIBRARY = ROOT / "keyclaim" / "src"


def modules() -> dict[str, Path]:
    """Every module of the project outside the tests, by its dotted name."""
    found = {p.stem: p for p in ROOT.glob("*.py")}
    for folder in ("demo", "tools", "stand_in"):
        found |= {f"{folder}.{p.stem}": p for p in (ROOT / folder).glob("*.py")}
    found |= {
        ".".join(p.relative_to(LIBRARY).with_suffix("").parts): p for p in LIBRARY.rglob("*.py")
    }
    return {name.removesuffix(".__init__"): path for name, path in found.items()}


def imported(name: str, path: Path, known: set[str]) -> set[str]:
    """The project's modules this file (module `name`) imports, at any depth (a function's own
    imports, and those only a type checker reads, too), by import statement, relative ones
    included, or by a literal name handed to importlib.import_module or __import__."""
    names: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from this module's package, or one above it
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(filter(None, [*up, base]))
            # `from package import module` depends on the module; a name the package itself
            # defines or hands on, on the package.
            for alias in node.names:
                inner = f"{base}.{alias.name}"
                names.add(inner if inner in known else base)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None))
            in ("import_module", "__import__")
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.add(str(node.args[0].value))
    # A name that is a module of the project, or the nearest package that holds it.
    found = set()
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name:
            found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(name, path, set(known)) - {name} for name, path in known.items()}


def test_no_module_of_the_harness_or_the_tools_imports_the_sample() -> None:
    """The harness is handed the app and the tasks; the tools name what they run on their
    command line (tools/given.py). Checked by mutation: an `import tasks` put back into
    demo/stack.py, and `import sample` into tools/stress.py, each fail this test."""
    upward = {
        name: sorted(n for n in deps if n.split(".")[0] in SAMPLE)
        for name, deps in graph().items()
        if name.startswith(("demo", "tools"))
    }
    assert {name: deps for name, deps in upward.items() if deps} == {}


def test_keyclaim_knows_nothing_above_it() -> None:
    above = SAMPLE | {"demo", "tools"}
    found = {
        name: sorted(n for n in deps if n.split(".")[0] in above)
        for name, deps in graph().items()
        if name.startswith("keyclaim")
    }
    assert {name: deps for name, deps in found.items() if deps} == {}


def test_no_import_circle_anywhere() -> None:
    """A module that imports, however indirectly, a module that imports it back, is a circle.
    Checked by mutation: demo/noisy.py importing demo.outcome for its type again fails
    this test."""
    edges = graph()
    circles, done, path = [], set(), []

    def visit(name: str) -> None:
        path.append(name)
        for dep in sorted(edges.get(name, ())):
            if dep in path:
                circles.append(path[path.index(dep) :] + [dep])
            elif dep not in done:
                visit(dep)
        path.pop()
        done.add(name)

    for name in sorted(edges):
        if name not in done:
            visit(name)
    assert circles == []
