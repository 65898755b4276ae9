"""The sample and its harness use keyclaim through its public modules alone.

The face, keyclaim.inspect, and keyclaim.runners (its runners, to derive from)."""

import ast

import pytest

import keyclaim
from demo.stack import ROOT

pytestmark = pytest.mark.unit

PUBLIC = {*keyclaim.__all__, "inspect", "runners"}
TOPS = ("api_server.py", "tasks.py", "enqueue.py", "sample.py")


def reaches_in(source: str) -> set[str]:
    """What of keyclaim the source uses besides its face and keyclaim.inspect."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("keyclaim.")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("keyclaim."):
            found.add(str(node.module))
        elif isinstance(node, ast.ImportFrom) and node.module == "keyclaim":
            found |= {f"keyclaim.{a.name}" for a in node.names if a.name not in PUBLIC}
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "keyclaim"
            and node.attr not in PUBLIC
        ):
            found.add(f"keyclaim.{node.attr}")
    return found - {"keyclaim.inspect", "keyclaim.runners", "keyclaim.overrides"}  # the operator's


def test_the_harness_and_the_sample_use_keyclaims_face_and_inspect_alone() -> None:
    """demo/runners.py once subclassed keyclaim.drain's and keyclaim.wake's runners: modules
    the library may change at will; it takes them from keyclaim.runners. Checked by mutation:
    with `from keyclaim.drain import DrainingThreadRunner` back in demo/runners.py, this test
    failed."""
    files = [ROOT / name for name in TOPS]
    folders = ("demo", "tools", "stand_in")
    files += [p for folder in folders for p in sorted((ROOT / folder).glob("*.py"))]
    used = {str(p.relative_to(ROOT)): reaches_in(p.read_text()) for p in files}
    assert {path: names for path, names in used.items() if names} == {}


def test_what_reaches_in_is_found() -> None:
    assert reaches_in("from keyclaim.drain import X\nimport keyclaim.wake") == {
        "keyclaim.drain",
        "keyclaim.wake",
    }
    assert reaches_in("import keyclaim\nkeyclaim.fleet.beat(1)\nkeyclaim.install(b)") == {
        "keyclaim.fleet"
    }
    assert reaches_in("import keyclaim\nkeyclaim.inspect.waiting(app)") == set()
