"""The package's layering, read from the source: imports only point down, and no module imports itself
back through another.

Layers, top to bottom (DESIGN.md): cli > serve > experiments > render > views > index > inspect >
subjects > train > anatomy > models > data > validate > progress > fileio > errors. Every import
counts, the ones inside functions too (an import hidden in a function to dodge a cycle is still a
cycle); imports under ``if TYPE_CHECKING:`` only have to point down.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "convlens"
LAYERS = [
    "cli",
    "serve",
    "experiments",
    "render",
    "views",
    "index",
    "inspect",
    "subjects",
    "train",
    "anatomy",
    "models",
    "data",
    "validate",
    "progress",
    "fileio",
    "interrupts",
    "errors",
]


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported convlens module, under TYPE_CHECKING) for every import in the file."""
    tree = ast.parse(path.read_text())
    package = (
        _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    )
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                typing_only.update(id(n) for n in ast.walk(inner))
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            names = [mod] + [f"{mod}.{a.name}" for a in node.names]
        for name in names:
            if name.startswith("convlens.") and _exists(name):
                found.append((name, id(node) in typing_only))
    return found


def _exists(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (SRC / rel).with_suffix(".py").is_file() or (SRC / rel / "__init__.py").is_file()


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


FILES = sorted(p for p in SRC.rglob("*.py"))


def test_every_package_has_a_layer() -> None:
    top = {p.relative_to(SRC).parts[0].removesuffix(".py") for p in FILES}
    assert top - {"__init__", "__main__"} <= set(LAYERS), top - set(LAYERS)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_down(path: Path) -> None:
    me = _layer(_module_name(path))
    if me is None:  # the package root: a facade that may name anything lazily
        return
    wrong = []
    for name, _typing in _imports(path):
        other = _layer(name)
        if other is None or other == me:
            continue
        if LAYERS.index(other) < LAYERS.index(me):
            wrong.append(name)
    assert not wrong, f"{_module_name(path)} ({me}) imports upward: {wrong}"


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {}
    for path in FILES:
        mod = _module_name(path)
        deps = {name for name, typing in _imports(path) if not typing}
        # `from convlens.x import y` names module x (and x.y when y is a module): keep modules only
        graph[mod] = {d for d in deps if d != mod and not mod.startswith(d + ".")}
    # A package's __init__ importing its own submodules is how packages export; the reverse
    # edge (a submodule importing its package) is what closes a cycle, so it stays.
    for mod, deps in graph.items():
        graph[mod] = {d for d in deps if not (d.startswith(mod + ".") and _is_package(mod))}
    cycle = _find_cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def _is_package(mod: str) -> bool:
    return (SRC / Path(*mod.split(".")[1:]) / "__init__.py").is_file()


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 visiting, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


FACES = [p for p in FILES if p.relative_to(SRC).parts[0] in ("render", "serve")]


@pytest.mark.parametrize("path", FACES, ids=lambda p: str(p.relative_to(SRC)))
def test_faces_do_not_call_inspect(path: Path) -> None:
    """The report and the web app encode views; only :mod:`convlens.views` calls the methods."""
    called = [
        name for name, _typing in _imports(path) if name.split(".")[:2] == ["convlens", "inspect"]
    ]
    text = path.read_text()
    if "from convlens import inspect" in text or "import convlens.inspect" in text:
        called.append("convlens.inspect")
    assert not called, f"{_module_name(path)} imports {called}; ask convlens.views instead"
