"""The package's shape: no import circle, no module over 400 lines, a face of ten names."""

import ast
from pathlib import Path

import pytest

import keyclaim

pytestmark = pytest.mark.unit

PACKAGE = Path(keyclaim.__file__).parent
LONGEST = 400  # lines: past it, a module holds more than one role


def module_name(path: Path) -> str:
    return "keyclaim" if path.name == "__init__.py" else f"keyclaim.{path.stem}"


def graph() -> dict[str, set[str]]:
    """Each of the library's modules and the library's modules it imports: at its top, in a
    function, or for the type checker alike. `from keyclaim import x` imports the module
    keyclaim.x where there is one, else the package's face."""
    modules = {module_name(p): p for p in PACKAGE.glob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package itself
                    base = ".".join(["keyclaim", *filter(None, [base])])
                for alias in node.names:
                    found.add(sub if (sub := f"{base}.{alias.name}") in modules else base)
        edges[name] = {m for m in found if m in modules and m != name}
    return edges


def circle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as the modules along it; None when there is none."""
    done: set[str] = set()

    def walk(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        for imported in sorted(edges[module]):
            if found := walk(imported, [*path, module]):
                return found
        done.add(module)
        return None

    return next((found for module in sorted(edges) if (found := walk(module, []))), None)


def test_no_module_of_the_library_imports_one_that_imports_it_back() -> None:
    """The installer imports the classes it selects, and they import the names it writes: those
    names sit at the bottom (keyclaim.config), the installer at the top. Checked by mutation:
    with keep_connections' KEEP_KEY imported from keyclaim.installer, as config.py once held
    both, connections -> installer -> connections was found and this test failed."""
    edges = graph()
    assert {"keyclaim", "keyclaim.installer", "keyclaim.config"} <= edges.keys()
    assert "keyclaim.config" in edges["keyclaim.installer"]  # the graph sees imports at all
    assert "keyclaim.sqlite_claim" in edges["keyclaim.installer"]  # in a function too
    assert circle(edges) is None


def test_the_circle_finder_finds_a_circle() -> None:
    assert circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert circle({"a": {"b"}, "b": set()}) is None


def test_no_module_is_longer_than_one_role() -> None:
    lengths = {p.name: len(p.read_text().splitlines()) for p in PACKAGE.glob("*.py")}
    assert {name: n for name, n in lengths.items() if n > LONGEST} == {}


def test_the_face_is_ten_names_and_the_rest_is_keyclaim_inspect() -> None:
    assert len(keyclaim.__all__) <= 10
    assert all(hasattr(keyclaim, name) for name in keyclaim.__all__)
    assert all(hasattr(keyclaim.inspect, name) for name in keyclaim.inspect.__all__)
    assert set(keyclaim.__all__).isdisjoint(keyclaim.inspect.__all__)


def test_the_library_says_it_is_typed() -> None:
    """py.typed, where the package is installed: in a fresh environment (CI's), only if the
    wheel ships it."""
    assert (PACKAGE / "py.typed").is_file()
