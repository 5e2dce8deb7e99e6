"""Imports run one way through the stages: a module never imports a later stage."""

from __future__ import annotations

import ast
from pathlib import Path

import lazyweights

ROOT = Path(lazyweights.__file__).parent
STAGES = {
    **dict.fromkeys(("errors", "manifest", "geometry"), 0),
    "storage": 1,
    "formats": 2,
    "read": 3,
    "stream": 4,
    "targets": 5,
    "checkpoint": 6,
    **dict.fromkeys(("tools", "keras", "torch", "cli"), 7),
    **dict.fromkeys(("__init__", "__main__"), 8),
}


def _stage(parts: list[str]) -> int | None:
    return STAGES.get(parts[0].removesuffix(".py")) if parts else None


def _imported(path: Path) -> list[list[str]]:
    package = list(path.relative_to(ROOT).parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            if node.module:
                out.append(base + node.module.split("."))
            else:
                out.extend([*base, a.name] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lazyweights."):
            out.append(node.module.split(".")[1:])
        elif isinstance(node, ast.Import):
            out.extend(a.name.split(".")[1:] for a in node.names if a.name.startswith("lazyweights."))
    return out


def test_no_module_imports_a_later_stage() -> None:
    later = []
    for path in sorted(ROOT.rglob("*.py")):
        me = _stage(list(path.relative_to(ROOT).parts))
        for target in _imported(path):
            them = _stage(target)
            if me is not None and them is not None and them > me:
                later.append(f"{path.relative_to(ROOT)} imports {'.'.join(target)}")
    assert not later, later


def test_torch_target_logic_reads_no_storage_formats_or_checkpoint() -> None:
    imported = {t[0] for t in _imported(ROOT / "targets" / "torch" / "target.py")}
    assert not imported & {"storage", "formats", "checkpoint"}, imported
