"""The package's layers point down only and no module imports itself back through others.

Layers, bottom to top: base utilities <- library <- recipes <- entry points (CLI commands, the
launcher, the demo). Imports are read from the source (every ``import`` statement, also inside
functions), so a lazy import counts like any other.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

PACKAGE = Path(__file__).resolve().parents[1] / "olmo_flex_ext"

BASE = {"errors", "atomic", "outputs", "progress", "lazy"}
ENTRY = {"cli", "cli_args", "commands", "launch", "demo"}
LAYERS = ("base", "library", "recipes", "entry")


def module_names() -> Dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def layer(module: str) -> str:
    parts = module.split(".")[1:]
    if not parts:
        return "library"  # the package root: load_model and the version
    if parts[0] in BASE:
        return "base"
    if parts[0] in ENTRY or parts[-1] == "commands":
        return "entry"
    if parts[0] == "recipes":
        return "recipes"
    return "library"


def _type_only(tree: ast.Module) -> Set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:`` (annotations, never executed)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            out.update(id(n) for n in ast.walk(node))
    return out


def imports(module: str, path: Path, known: Set[str], runtime: bool = False) -> Set[str]:
    """The package's modules that ``module`` imports (``from .x import y`` counts ``.x.y`` when
    that is a module, else ``.x``); with ``runtime``, not those imported for type checking only."""
    is_pkg = path.name == "__init__.py"
    package = module if is_pkg else module.rpartition(".")[0]
    out = set()
    tree = ast.parse(path.read_text())
    skip = _type_only(tree) if runtime else set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in known else target)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return {m for m in out if m in known and m != module}


def graph(runtime: bool = False) -> Dict[str, Set[str]]:
    modules = module_names()
    known = set(modules)
    return {m: imports(m, p, known, runtime) for m, p in modules.items()}


def test_layers_point_down():
    upward: List[str] = []
    for module, deps in sorted(graph().items()):
        for dep in sorted(deps):
            if LAYERS.index(layer(dep)) > LAYERS.index(layer(module)):
                upward.append(f"{module} ({layer(module)}) imports {dep} ({layer(dep)})")
    assert not upward, "imports that point up:\n  " + "\n  ".join(upward)


def test_no_import_cycles():
    # Imports for type checking only are not dependencies at run time; a package and its own
    # submodules (an __init__ that re-exports them) are not a cycle either.
    g = graph(runtime=True)
    cycles, state, stack = [], {}, []

    def visit(m: str) -> None:
        state[m] = "open"
        stack.append(m)
        for d in sorted(g[m]):
            if m.startswith(d + ".") or d.startswith(m + "."):
                continue  # a package and its own submodules
            if state.get(d) == "open":
                cycles.append(" -> ".join(stack[stack.index(d) :] + [d]))
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = "done"

    for m in sorted(g):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n  " + "\n  ".join(cycles)


def test_the_rules_see_imports():
    g = graph()
    assert "olmo_flex_ext.checkpoint" in g["olmo_flex_ext.prune.slicing"]
    assert layer("olmo_flex_ext.prune.commands") == "entry"
    assert layer("olmo_flex_ext.recipes.flex_math") == "recipes"
    assert layer("olmo_flex_ext.demo.data.corpus") == "entry"
    assert layer("olmo_flex_ext.atomic") == "base"
