"""mtk's modules import each other without a cycle: every ``import`` and ``from ... import`` that runs (at module
level or inside functions), read with ``ast``, is an edge; a cycle is a strongly connected component of more than
one module (or a module importing itself). Imports under ``if TYPE_CHECKING:`` never run: they name types for
annotations (a format's functions take a ``QuantizeConfig``, which is validated against the format rows), so
they are left out.

The one allowed pattern is registration: a package's ``__init__`` imports its built-in entries so that they
register themselves with a registry they import back. ``REGISTRATION`` lists the places that do it today;
a cycle is allowed only when all its modules are inside one of them (better none: each may go).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import mtk

ROOT = Path(mtk.__file__).resolve().parent


def _package(folder: str) -> frozenset[str]:
    """A registry package and its entry modules: ``mtk.a.b`` and every ``mtk.a.b.x``."""
    name = "mtk." + folder.replace("/", ".")
    return frozenset({name} | {f"{name}.{p.stem}" for p in (ROOT / folder).glob("*.py") if p.stem != "__init__"})


REGISTRATION = (
    # The registries of quantization methods and checkpoint formats live in their packages' __init__, which
    # imports the built-in entries at its end; each entry module registers itself there.
    _package("quantizers/methods"),
    _package("quantizers/formats"),
    # family_for_gguf() imports the families package on first use; each family module registers with family.py.
    frozenset({"mtk.converters.family", "mtk.converters.families"})
    | {f"mtk.converters.families.{p.stem}" for p in (ROOT / "converters" / "families").glob("*.py")},
)


def module_names(root: Path) -> dict[str, Path]:
    """Dotted name -> file for every module of the package at ``root`` (``pkg`` for ``pkg/__init__.py``)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (relative imports resolved against ``module``)."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules ``module`` imports: ``from a import b`` names ``a.b`` when that is a module."""
    out = set()
    is_package = path.name == "__init__.py"
    for node in _running_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(module, is_package, node)
            for alias in node.names:
                if f"{target}.{alias.name}" in known:
                    out.add(f"{target}.{alias.name}")
                elif target in known:
                    out.add(target)
    out.discard(module)  # `from pkg import name` inside pkg's own __init__: no edge
    return out


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _running_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:`` blocks (their ``else`` runs)."""
    out: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        if _is_type_checking(node):
            todo.extend(node.orelse)  # type: ignore[attr-defined]
            continue
        todo.extend(ast.iter_child_nodes(node))
    return out


def import_graph(root: Path) -> dict[str, set[str]]:
    modules = module_names(root)
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module, or a module that imports itself (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_walker_sees_function_level_imports_and_finds_a_cycle(tmp_path: Path) -> None:
    """The walker on a made-up package: a cycle through a function-level relative import is found; a package
    ``__init__`` importing a submodule that does not import it back is not a cycle."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg import a\n")
    (pkg / "a.py").write_text("import json\n\ndef f():\n    from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from pkg.c import thing\n")
    (pkg / "c.py").write_text("def g():\n    from pkg.a import f\n")
    graph = import_graph(pkg)
    assert graph["pkg"] == {"pkg.a"} and graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub"] == set()
    assert cycles(graph) == [["pkg.a", "pkg.c", "pkg.sub.b"]]
    (pkg / "c.py").write_text("thing = 1\n")
    assert cycles(import_graph(pkg)) == []


def test_mtk_has_no_import_cycle() -> None:
    graph = import_graph(ROOT)
    assert len(graph) > 50 and graph["mtk.cli.app"]  # the walker read the package
    assert [c for c in cycles(graph) if not any(set(c) <= allowed for allowed in REGISTRATION)] == []


def test_converters_do_not_import_verification() -> None:
    """Converters return results; the commands hand them a check (mtk.artifacts) to call on their output."""
    graph = import_graph(ROOT)
    converters = [m for m in graph if m.startswith("mtk.converters")]
    assert converters and not [(m, t) for m in converters for t in graph[m] if t.startswith("mtk.artifacts")]


# The floors of the house, lowest first (docs/ARCHITECTURE.md): a module imports from its own floor or below.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("mtk.errors", "mtk.results", "mtk.registry", "mtk.compare", "mtk.version"),
    ("mtk.formats", "mtk.runtime"),
    ("mtk.kernels",),
    ("mtk.converters", "mtk.inspection"),
    ("mtk.quantizers",),
    ("mtk.artifacts",),
    ("mtk.bench",),
    ("mtk.pipeline",),
    ("mtk", "mtk.api"),
    ("mtk.cli", "mtk.__main__"),
)


def floor_of(module: str) -> int:
    """The floor of ``module``: that of the longest prefix named in LAYERS (a new module must be placed)."""
    best, length = -1, -1
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > length:
                best, length = i, len(name)
    assert best >= 0, f"{module} is on no floor of LAYERS"
    return best


def upward(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((m, t) for m, targets in graph.items() for t in targets if floor_of(t) > floor_of(m))


def test_nothing_imports_a_floor_above_its_own() -> None:
    assert upward(import_graph(ROOT)) == []
    assert floor_of("mtk.kernels.types") == 2 and floor_of("mtk") == 8  # the prefixes resolve as meant


def test_the_floor_check_finds_an_upward_import() -> None:
    assert upward({"mtk.formats.gguf_reader": {"mtk.errors"}}) == []
    assert upward({"mtk.formats.gguf_reader": {"mtk.artifacts.gguf"}}) == [
        ("mtk.formats.gguf_reader", "mtk.artifacts.gguf")
    ]
