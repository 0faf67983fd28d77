"""The layout's rules, checked on the source (issue 11): dependencies point one way, no
import cycles (function-level imports count), no module reaches into another's private
names, modules stay small, and the top level holds only the API surface."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "dispatch"

# Lower number = lower layer; a module may import only its own layer or lower ones.
LAYERS: dict[str, int] = {
    "errors": 0, "results": 0, "_validate": 0, "_version": 0,
    "ssh": 1,
    "shipping": 2,
    "slurm": 3,
    "placement": 4,
    "jupyter": 5,
    "aio": 6,
    "agent": 7,
    "_blocking": 8,
    "__init__": 9,
    "cli": 10,
}
MAX_LINES = 650  # "about 600"


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if _is_package(module) else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str) -> list[tuple[str, list[str], int]]:
    """(imported dispatch module, names taken from it, line) for every import, nested too."""
    tree = ast.parse(MODULES[module].read_text())
    found: list[tuple[str, list[str], int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names
                      if a.name.split(".")[0] == "dispatch"]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node)
            if target.split(".")[0] != "dispatch":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in MODULES:  # `from . import parse`: the submodule itself
                    found.append((sub, [], node.lineno))
                else:
                    found.append((target, [alias.name], node.lineno))
    return found


def _layer(module: str) -> int:
    parts = module.split(".")
    key = parts[1] if len(parts) > 1 else "__init__"
    return LAYERS[key]


def _type_checking_lines(module: str) -> set[int]:
    """Lines inside ``if TYPE_CHECKING:`` blocks (typing only: no run-time dependency)."""
    tree = ast.parse(MODULES[module].read_text())
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            for inner in ast.walk(node):
                if hasattr(inner, "lineno"):
                    lines.add(inner.lineno)
    return lines


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        _layer(module)  # KeyError names a module outside the map


def test_dependencies_point_down() -> None:
    bad = []
    for module in MODULES:
        typing_only = _type_checking_lines(module)
        for target, _, line in _imports(module):
            if line in typing_only or target not in MODULES:
                continue
            if _layer(target) > _layer(module):
                bad.append(f"{module}:{line} imports {target}")
    assert not bad, "\n".join(bad)


def test_no_import_cycles() -> None:
    graph = {m: {t for t, _, line in _imports(m) if t in MODULES and t != m
                 and line not in _type_checking_lines(m)} for m in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "\n".join(cycles)


def test_no_module_imports_another_modules_private_names() -> None:
    bad = []
    for module in MODULES:
        for target, names, line in _imports(module):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and target != module:
                bad.append(f"{module}:{line} takes {private} from {target}")
            if target.split(".")[-1].startswith("_") and target not in (
                    "dispatch._blocking", "dispatch._validate", "dispatch._version"
            ) and target != module:
                bad.append(f"{module}:{line} imports private module {target}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_small(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines"


def test_the_top_level_is_the_api_surface() -> None:
    top = sorted(p.name for p in SRC.glob("*.py"))
    assert len(top) <= 8, top
