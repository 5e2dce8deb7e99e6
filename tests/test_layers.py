"""Imports run one way: ground <- storage <- formats <- read <- stream <- targets <- checkpoint <- tools/facades/cli.

An AST walk over ``lazyweights/**/*.py`` (module level and inside functions,
absolute and relative imports) builds the import graph between the package's
own modules; the tests check it against the stage order.  ``TYPE_CHECKING``
imports count too: a type that names a later stage is a design smell.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "lazyweights"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

GROUND, STORAGE, FORMATS, READ, STREAM, TARGETS, CHECKPOINT, TOP = range(8)
STAGE_NAMES = ["ground", "storage", "formats", "read", "stream", "targets", "checkpoint", "tools/facades/cli"]
SUBPACKAGES = {"storage": STORAGE, "formats": FORMATS, "read": READ, "stream": STREAM, "targets": TARGETS, "tools": TOP}
TOP_MODULES = {"errors": GROUND, "attrs": GROUND, "manifest": GROUND, "geometry": GROUND, "checkpoint": CHECKPOINT}
FACADES = {"keras", "torch", "cli"}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def stage(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:  # the package __init__ re-exports everything
        return TOP
    head = parts[1]
    if head in SUBPACKAGES:
        return SUBPACKAGES[head]
    if head in TOP_MODULES:
        return TOP_MODULES[head]
    if head in FACADES:
        return TOP
    raise AssertionError(f"{module}: no stage assigned; add it to tests/test_layers.py")


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base.pop()
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(root: Path = ROOT) -> dict[str, dict[str, int]]:
    """Module → {imported package module: first line}, for the package's own modules only."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, dict[str, int]] = {}
    for module, path in files.items():
        edges: dict[str, int] = {}
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, is_package, node)
                # `from . import formats` names the module lazyweights.formats, not the package __init__
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for target in targets:
                while target and target not in files and "." in target:  # `import lazyweights.x.y` of a name
                    target = target.rsplit(".", 1)[0]
                if target in files and target != module:
                    edges.setdefault(target, node.lineno)
        graph[module] = edges
    return graph


def stage_violations(graph: dict[str, dict[str, int]]) -> list[str]:
    bad = []
    for module, edges in graph.items():
        for target, line in edges.items():
            if stage(target) > stage(module):
                bad.append(
                    f"{module}:{line} ({STAGE_NAMES[stage(module)]}) imports {target} "
                    f"({STAGE_NAMES[stage(target)]}, a later stage)"
                )
    return bad


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
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
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, dict[str, int]]:
    return import_graph()


def test_every_module_has_a_stage(graph):
    assert len(graph) > 30
    for module in graph:
        stage(module)


def test_imports_run_one_way(graph):
    assert stage_violations(graph) == []


def test_no_import_cycles(graph):
    assert cycles(graph) == []


def test_targets_never_import_storage_or_formats(graph):
    bad = [
        f"{m}:{line} imports {t}"
        for m, edges in graph.items()
        if stage(m) == TARGETS
        for t, line in edges.items()
        if stage(t) in (STORAGE, FORMATS)
    ]
    assert bad == []


def test_storage_names_no_format_module():
    bad = []
    for path in sorted((ROOT / "storage").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [a.name for a in node.names]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "\n" not in node.value:
                names = [node.value]  # importlib.import_module("lazyweights.formats...")
            bad += [f"{path.name}:{node.lineno}: {n}" for n in names if n and "formats" in n.split(".")]
    assert bad == []


# -- the checks can fail ----------------------------------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / PACKAGE
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_a_backward_import_is_caught(tmp_path):
    root = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "errors.py": "",
            "checkpoint.py": "from .storage import source\n",
            "storage/__init__.py": "",
            "storage/source.py": "def f():\n    from ..formats import hdf5\n",  # inside a function
            "formats/__init__.py": "",
            "formats/hdf5.py": "import lazyweights.errors\nfrom lazyweights.stream.executor import execute\n",
            "stream/__init__.py": "",
            "stream/executor.py": "",
            "targets/__init__.py": "from ..formats import hdf5\n",
        },
    )
    graph = import_graph(root)
    assert graph["lazyweights.checkpoint"] == {"lazyweights.storage.source": 1}
    bad = stage_violations(graph)
    assert len(bad) == 2, bad
    assert any(b.startswith("lazyweights.storage.source:2 ") and "lazyweights.formats.hdf5" in b for b in bad)
    assert any(b.startswith("lazyweights.formats.hdf5:2 ") and "lazyweights.stream.executor" in b for b in bad)


def test_a_cycle_is_caught(tmp_path):
    root = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "read/__init__.py": "",
            "read/a.py": "from . import b\n",
            "read/b.py": "from .c import x\n",
            "read/c.py": "def f():\n    import lazyweights.read.a\n",
            "read/d.py": "from . import a\n",
        },
    )
    assert cycles(import_graph(root)) == [["lazyweights.read.a", "lazyweights.read.b", "lazyweights.read.c"]]
