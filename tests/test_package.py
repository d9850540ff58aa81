"""The package as a whole. Its import graph has no cycle: no two modules of bge_ref import each other,
directly or in a loop, at module level or inside a function (read from the source with ast, nothing
imported). Its version comes from one place, pyproject.toml, through the installed metadata."""
import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.quick

PACKAGE = Path(__file__).resolve().parent.parent / "bge_ref"


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = ("bge_ref",) + path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str], root: Path = PACKAGE) -> set[str]:
    """The package modules a file imports, anywhere in it (`from . import x` of a submodule x counts as x)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:  # `import bge_ref.fast as F` names bge_ref.fast; an attribute its module
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    files = sorted(root.rglob("*.py"))
    modules = {module_name(f, root) for f in files}
    return {module_name(f, root): imports(f, modules, root) for f in files}


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search)."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(edges.get(m, ())):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = "done"
        return None

    for m in sorted(edges):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycle_in_bge_ref():
    edges = graph()
    assert "bge_ref.api" in edges and "bge_ref.batching" in edges["bge_ref.api"]
    found = cycle(edges)
    assert found is None, "import cycle: " + " -> ".join(found)


def test_a_cycle_is_found(tmp_path):
    """The check has teeth: two modules importing each other (one of them lazily) form a cycle."""
    pkg = tmp_path / "bge_ref"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("from . import b\n\ndef f():\n    return b\n")
    (pkg / "b.py").write_text("def g():\n    from .a import f\n    return f\n")
    assert cycle(graph(pkg)) == ["bge_ref.a", "bge_ref.b", "bge_ref.a"]
    (pkg / "b.py").write_text("def g():\n    return 1\n")
    assert cycle(graph(pkg)) is None


def test_version_is_the_distribution_s_with_a_checkout_fallback(monkeypatch):
    import re
    from importlib import metadata

    import bge_ref
    pyproject = re.search(r'^version = "(.+)"', (PACKAGE.parent / "pyproject.toml").read_text(), re.M).group(1)
    assert bge_ref.__version__ == metadata.version("bge-ref")

    def missing(name):
        raise metadata.PackageNotFoundError(name)
    monkeypatch.setattr(metadata, "version", missing)  # a source checkout that is not installed
    assert bge_ref._version() == pyproject
