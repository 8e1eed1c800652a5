"""No import circle inside the package.

The graph is read from the source with ``ast`` (nothing is executed), one node per module and an
edge for each srft-internal ``import``/``from`` statement. Two graphs:

- module level: the statements that run when a module is imported (the module body, class
  bodies, ``if``/``try`` blocks at module level). A circle here breaks an import depending on
  which module is imported first, so there must be none;
- every import, those inside functions too. A lazy import inside a function hides a circle from
  Python but not from the reader: the two modules still need each other. The only ones allowed
  are listed in ``LAZY_CIRCLES``, each with the reason it is still there.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "srft"

# Circles through lazy imports that are known and not yet cut (each names its owner's fix).
# When one is cut, the test fails until it is removed from here.
LAZY_CIRCLES: set[frozenset] = set()  # none left: config/rundir and the two engines were cut by leaf modules


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its ``__init__.py``)."""
    out = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _statements(node: ast.AST, lazy: bool):
    """The import statements under ``node``; function bodies only when ``lazy``."""
    for child in ast.iter_child_nodes(node):
        if not lazy and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        yield from _statements(child, lazy)


def _resolve(name: str, importer: str, is_package: bool, level: int) -> str:
    if not level:
        return name
    base = importer.split(".")[: len(importer.split(".")) - level + (1 if is_package else 0)]
    return ".".join(base + ([name] if name else []))


def graph(lazy: bool) -> dict[str, set[str]]:
    """module -> the srft modules it imports. An import of ``a.b.c`` runs ``a`` and ``a.b`` first,
    so they count too, except the importer's own parent packages (already being imported when
    the importer runs: Python hands over the partial module, which is no circle)."""
    mods = modules()
    out: dict[str, set[str]] = {}
    for name, path in mods.items():
        is_package = path.name == "__init__.py"
        own_parents = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        if is_package:
            own_parents.add(name)
        targets = set()
        for st in _statements(ast.parse(path.read_text(), str(path)), lazy):
            if isinstance(st, ast.Import):
                wanted = [a.name for a in st.names]
            else:
                module = _resolve(st.module or "", name, is_package, st.level)
                # ``from pkg import sub`` imports the submodule ``pkg.sub``; any other name has to be
                # defined by pkg itself, own parent package or not
                subs = [f"{module}.{a.name}" for a in st.names if f"{module}.{a.name}" in mods]
                wanted = subs + ([module] if len(subs) < len(st.names) else [])
                if len(subs) < len(st.names) and module in own_parents and module != name:
                    targets.add(module)
            for target in wanted:
                parts = target.split(".")
                for i in range(1, len(parts) + 1):
                    t = ".".join(parts[:i])
                    if t in mods and t not in own_parents and t != name:
                        targets.add(t)
        out[name] = targets
    return out


def circles(g: dict[str, set[str]]) -> list[list[str]]:
    """The groups of modules that import each other, round and round (the strongly connected
    components of more than one module, Tarjan's walk), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def one_circle(g, comp: list[str]) -> list[str]:
    """The shortest way from the group's first module back to itself, to print."""
    inside = set(comp)
    start = comp[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:  # breadth first: the shortest way back
        nxt = []
        for v in frontier:
            for w in sorted(g[v] & inside):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    return comp


def _describe(g, found: list[list[str]]) -> str:
    lines = []
    for comp in found:
        circle = one_circle(g, comp)
        rest = sorted(set(comp) - set(circle))
        lines.append(" -> ".join(circle) + (f"  (and in the same knot: {', '.join(rest)})" if rest else ""))
    return "\n".join(lines)


def test_every_module_imports():
    # in a fresh interpreter: some modules set process-wide defaults when imported (matplotlib's
    # backend, vLLM's environment), which this test session should not inherit
    names = [n for n in modules() if n != "srft.__main__"]  # __main__ runs the CLI
    code = "import importlib, sys\nfor n in sys.argv[1:]:\n    importlib.import_module(n)\n"
    done = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_no_import_circle_at_module_level():
    g = graph(lazy=False)
    found = circles(g)
    assert not found, f"import circles among module-level imports:\n{_describe(g, found)}"


def test_no_import_circle_through_lazy_imports():
    g = graph(lazy=True)
    found = circles(g)
    unexpected = [c for c in found if frozenset(c) not in LAZY_CIRCLES]
    assert not unexpected, f"import circles (lazy imports included):\n{_describe(g, unexpected)}"
    gone = LAZY_CIRCLES - {frozenset(c) for c in found}
    assert not gone, f"cut, so remove from LAZY_CIRCLES: {[sorted(c) for c in gone]}"


@pytest.mark.parametrize("lazy", [False, True])
def test_the_walk_finds_a_planted_circle(lazy):
    g = graph(lazy)
    g["srft.scoring"] = g["srft.scoring"] | {"srft.tasks.base"}  # tasks.base imports scoring
    assert ["srft.scoring", "srft.tasks.base"] in circles(g)
    assert one_circle(g, ["srft.scoring", "srft.tasks.base"]) == ["srft.scoring", "srft.tasks.base", "srft.scoring"]
