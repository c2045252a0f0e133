"""The layers of docs/architecture.md, enforced on the source: no import cycle between modules, no import from a
higher layer, no import of another package's private (``_``-prefixed) module or name.

The import graph is read from the AST of every module under src/fedleak (imports inside functions count too: a
lazy import is still a dependency). Imports under ``if TYPE_CHECKING:`` never run; they count for the layer rule
but not for cycles. The checker itself is tested on hand-made packages below, so a rule that silently stopped
firing would be noticed.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: bottom-up; a module may import its own layer and the layers below it, never one above.
LAYERS: list[tuple[str, ...]] = [
    ("errors",),
    ("registry", "runlock", "device", "lazy"),
    ("config", "config_messages", "seeding"),
    ("models",),
    ("data",),
    ("defenses",),
    ("signals",),
    ("fl",),
    ("metrics",),
    ("attacks",),
    ("report",),
    ("sweeps", "flower"),
    ("cli", "api"),
]
#: ``<area>/commands.py`` wires an area to the command line: it belongs to the top (cli) layer wherever it lives.
COMMANDS = "commands"

#: (importer, imported) pairs allowed to break a rule, each with its reason. Keep it empty or short.
EXCEPTIONS: dict[tuple[str, str], str] = {}


@dataclass(frozen=True)
class Edge:
    src: str  # importing module
    dst: str  # imported module
    name: str | None  # imported name (``from dst import name``), None for a module import
    lineno: int
    type_only: bool  # under ``if TYPE_CHECKING:``
    dst_is_package: bool


def module_names(root: Path, package: str) -> dict[str, Path]:
    """``{dotted module name: file}`` of every module of ``package`` under ``root``."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                lines.update(range(sub.lineno, (sub.end_lineno or sub.lineno) + 1))
    return lines


def _absolute(module: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_edges(root: Path, package: str) -> list[Edge]:
    """Every import of a ``package`` module by a ``package`` module."""
    modules = module_names(root, package)
    edges = []
    for mod, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        typed = _type_checking_lines(tree)
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(tree):
            targets: list[tuple[str, str | None]] = []
            if isinstance(node, ast.Import):
                targets = [(a.name, None) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(mod, is_pkg, node)
                targets = [(f"{base}.{a.name}", None) if f"{base}.{a.name}" in modules else (base, a.name)
                           for a in node.names]
            for dst, name in targets:
                if dst == package or dst.startswith(package + "."):
                    is_pkg_dst = dst in modules and modules[dst].name == "__init__.py"
                    edges.append(Edge(mod, dst, name, node.lineno, node.lineno in typed, is_pkg_dst))
    return edges


def layer_of(module: str, layers: list[tuple[str, ...]]) -> int:
    if module.rsplit(".", 1)[-1] == COMMANDS:
        return len(layers) - 1
    top = module.split(".")[1] if "." in module else ""
    for i, names in enumerate(layers):
        if top in names:
            return i
    raise AssertionError(f"{module} is in no layer: add its package to LAYERS and docs/architecture.md")


def upward_imports(edges: list[Edge], layers: list[tuple[str, ...]]) -> list[str]:
    return [
        f"{e.src}:{e.lineno} imports {e.dst} (layer {layer_of(e.dst, layers)} above {layer_of(e.src, layers)})"
        for e in edges
        if layer_of(e.dst, layers) > layer_of(e.src, layers) and (e.src, e.dst) not in EXCEPTIONS
    ]


def private_imports(edges: list[Edge]) -> list[str]:
    """Imports of a ``_name`` module or name from outside the package that holds it."""
    bad = []
    for e in edges:
        parts = e.dst.split(".") + ([e.name] if e.name else [])
        for i, part in enumerate(parts):
            if not part.startswith("_") or part.startswith("__"):
                continue
            is_name_in_module = e.name is not None and i == len(parts) - 1 and not e.dst_is_package
            owner = ".".join(parts[: i - 1] if is_name_in_module else parts[:i])  # the package holding it
            if not (e.src == owner or e.src.startswith(owner + ".")):
                bad.append(f"{e.src}:{e.lineno} imports private {'.'.join(parts[: i + 1])}")
            break
    return [b for b in bad if not any(b.startswith(f"{s}:") and f" {d}" in b for s, d in EXCEPTIONS)]


def import_cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components (> 1 module) of the runtime import graph (Tarjan, iterative)."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        if not e.type_only and e.src != e.dst and (e.src, e.dst) not in EXCEPTIONS:
            graph.setdefault(e.src, set()).add(e.dst)
            graph.setdefault(e.dst, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    comps: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    comps.append(sorted(comp))
    return comps


# ------------------------------------------------------------------------------------------------ the real tree


@pytest.fixture(scope="module")
def edges() -> list[Edge]:
    return import_edges(SRC, "fedleak")


def test_every_module_has_a_layer(edges):
    for mod in module_names(SRC, "fedleak"):
        if mod != "fedleak":
            layer_of(mod, LAYERS)


def test_no_import_from_a_higher_layer(edges):
    assert upward_imports(edges, LAYERS) == []


def test_no_import_cycle(edges):
    assert import_cycles(edges) == []


def test_no_private_import_across_packages(edges):
    assert private_imports(edges) == []


def test_exceptions_are_still_needed(edges):
    pairs = {(e.src, e.dst) for e in edges}
    assert [p for p in EXCEPTIONS if p not in pairs] == []


# ------------------------------------------------------------------------------------------- the checker itself


def _package(tmp_path: Path, files: dict[str, str]) -> list[Edge]:
    for rel, text in files.items():
        path = tmp_path / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return import_edges(tmp_path, "pkg")


def test_checker_finds_a_cycle_through_a_lazy_import_but_not_a_type_only_one(tmp_path):
    edges = _package(tmp_path, {
        "__init__.py": "",
        "a/__init__.py": "",
        "a/x.py": "from pkg.b import y\n",
        "b/__init__.py": "",
        "b/y.py": "def f():\n    from pkg.a.x import g\n",
        "b/z.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import x\n",
        "a/w.py": "from ..b import z\n",
    })
    assert import_cycles(edges) == [["pkg.a.x", "pkg.b.y"]]


def test_checker_finds_upward_and_private_imports(tmp_path):
    edges = _package(tmp_path, {
        "__init__.py": "",
        "low/__init__.py": "",
        "low/m.py": "from pkg.high.n import thing\n_hidden = 1\n",
        "low/_impl.py": "",
        "low/k.py": "from pkg.low.m import _hidden\nfrom . import _impl\n",
        "high/__init__.py": "",
        "high/n.py": "from pkg.low.m import _hidden\nfrom pkg.low import _impl\nthing = 2\n",
    })
    layers = [("low",), ("high",)]
    assert upward_imports(edges, layers) == ["pkg.low.m:1 imports pkg.high.n (layer 1 above 0)"]
    assert sorted(private_imports(edges)) == [
        "pkg.high.n:1 imports private pkg.low.m._hidden",
        "pkg.high.n:2 imports private pkg.low._impl",
    ]
