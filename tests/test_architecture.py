"""Imports point down the layers of docs/architecture.md: no package imports one above it (nor the command line)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[1] / "src" / "smoa"
LEVELS = {
    "_io": 0, "_memory": 0, "dense": 0, "_progress": 0, "peft_integration": 0, "assets": 0, "lm_head": 0,
    "adapter": 1, "baselines": 1, "models": 1, "tasks": 1,
    "__init__": 2, "methods": 2, "evaluation": 2,
    "analysis": 3, "harness": 3, "export": 3, "training": 4, "study": 5, "evidence": 6, "cli": 7,
}  # fmt: skip


def unit_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return parts[0]


def imported_units(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = path.relative_to(ROOT).parent.parts
                base = package[: len(package) - node.level + 1]
                names = [".".join(("smoa", *base, *([node.module] if node.module else [])))]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "smoa":
                found.add(parts[1] if len(parts) > 1 else "__init__")
    return found


def test_every_package_has_a_level():
    units = {unit_of(p) for p in ROOT.rglob("*.py")}
    assert units <= set(LEVELS), sorted(units - set(LEVELS))


def test_no_import_points_up():
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        unit = unit_of(path)
        for target in imported_units(path) - {unit}:
            if LEVELS[target] >= LEVELS[unit]:
                upward.append(f"{path.relative_to(ROOT)} ({unit}, level {LEVELS[unit]}) imports {target}")
    assert not upward, "\n".join(upward)


def module_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(("smoa", *(parts[:-1] if parts[-1] == "__init__" else parts)))


def module_imports(path: Path, modules: set[str]) -> set[str]:
    """Every smoa module ``path`` imports anywhere (top level, inside functions, under ``TYPE_CHECKING``); ``from
    package import name`` counts as the submodule ``package.name`` when that is a module, else as the package."""

    def known(name: str) -> str:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    package = module_of(path) if path.name == "__init__.py" else module_of(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {known(alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *([node.module] if node.module else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else known(base))
    return found - {"", module_of(path)}


def test_no_import_circle_between_modules():
    """Within a package too, each concept has one direction: no module reaches itself through imports (lazy ones
    included: deferring an import hides a circle, it does not remove it)."""
    paths = {module_of(p): p for p in ROOT.rglob("*.py")}
    graph = {name: module_imports(path, set(paths)) for name, path in paths.items()}
    circles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                circles.append(" → ".join([*trail[trail.index(target) :], target]))
            elif target not in state:
                visit(target, [*trail, target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not circles, "\n".join(circles)
