"""The package's shape, as docs/architecture.md states it, checked on the source.

- no import cycle between gradscope's modules (module-level imports; parents are imported first anyway);
- no module reads another module's private names (``from .x import _y``, ``x._y``, ``obj._y`` where the
  module defines no ``_y`` of its own);
- a function-level import of gradscope's own modules is there to keep an import light, and says so in a
  comment on its line or just above it;
- the layers import one way: rendering never imports analysis, measuring never imports analysis, the
  loaders never import the command line or the analyzer.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "gradscope"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


SOURCES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text(), str(path)) for name, path in SOURCES.items()}


def _package(module: str) -> str:
    return module if SOURCES[module].name == "__init__.py" else module.rpartition(".")[0]


def _targets(module: str, node: ast.AST) -> list[str]:
    """The gradscope modules an import statement loads (a name imported from a package that is not one of its
    submodules loads the package)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in SOURCES]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = _package(module)
        for _ in range(node.level - 1):
            base = base.rpartition(".")[0]
        base = f"{base}.{node.module}" if node.module else base
    else:
        base = node.module or ""
    if base not in SOURCES:
        return []
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in SOURCES else base for a in node.names]


def _module_level_imports(tree: ast.Module):
    """Import statements run when the module is imported: at its top, or under a module-level try/if."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.Try, ast.If)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                for child in getattr(node, field, []):
                    stack.extend(child.body if isinstance(child, ast.ExceptHandler) else [child])


def _in_type_checking(tree: ast.Module) -> set[int]:
    lines = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            lines |= {n.lineno for n in ast.walk(node) if hasattr(n, "lineno")}
    return lines


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for name, tree in TREES.items():
        skip = _in_type_checking(tree)
        graph[name] = {t for node in _module_level_imports(tree) if node.lineno not in skip
                       for t in _targets(name, node) if t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle of ``graph`` as the modules along it, or [] where there is none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_no_import_cycle():
    assert find_cycle(import_graph()) == []


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _own_private_names(tree: ast.Module) -> set[str]:
    """Private names a module defines: attributes it sets on any object, its functions, classes and globals."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Tuple) and isinstance(node.ctx, ast.Store):
            names |= {e.attr for e in node.elts if isinstance(e, ast.Attribute)}
    return {n for n in names if _private(n)}


def _external_names(tree: ast.Module) -> set[str]:
    """Names bound to modules from outside gradscope (``torch``, ``np``, ...): their private names are theirs."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names if not a.name.startswith("gradscope")}
        elif isinstance(node, ast.ImportFrom) and not node.level and not (node.module or "").startswith("gradscope"):
            names |= {a.asname or a.name for a in node.names}
    return names


def private_reach_ins() -> list[str]:
    """Private names of one gradscope module read in another. (A private attribute of a third-party object,
    such as ``nn.Module._modules``, is torch's to change, not gradscope's: it is not looked for here.)"""
    own = {name: _own_private_names(tree) for name, tree in TREES.items()}
    gradscope_names = set().union(*own.values())
    found = []
    for name, tree in TREES.items():
        theirs = set().union(*(names for other, names in own.items() if other != name)) - own[name]
        external = _external_names(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and _targets(name, node):
                for alias, target in zip(node.names, _targets(name, node)):
                    # a package-private module (gradscope._ext) may be imported; a private name in one may not
                    if _private(alias.name) and not target.endswith("." + alias.name):
                        found.append(f"{name}:{node.lineno} imports {alias.name} from {target}")
            elif isinstance(node, ast.Attribute) and node.attr in theirs:
                root, third_party = node.value, False
                while isinstance(root, ast.Attribute):  # x._handle.flat_param._params: FSDP's, not gradscope's
                    third_party |= _private(root.attr) and root.attr not in gradscope_names
                    root = root.value
                third_party |= isinstance(root, ast.Name) and root.id in external
                if not third_party:
                    found.append(f"{name}:{node.lineno} reads {ast.unparse(node)}")
    return sorted(found)


def test_no_module_reads_another_modules_private_names():
    assert private_reach_ins() == []


def _comment_near(lines: list[str], lineno: int) -> bool:
    """A comment on the import's line, or on the lines just above it (over a run of imports)."""
    i = lineno - 1
    if "#" in lines[i]:
        return True
    i -= 1
    while i >= 0 and lines[i].strip().startswith(("import ", "from ")):
        if "#" in lines[i]:
            return True
        i -= 1
    return i >= 0 and lines[i].strip().startswith("#")


def unexplained_function_level_imports() -> list[str]:
    found = []
    for name, tree in TREES.items():
        lines = SOURCES[name].read_text().splitlines()
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and _targets(name, node):
                    if not _comment_near(lines, node.lineno):
                        found.append(f"{name}:{node.lineno} {ast.unparse(node)}")
    return sorted(set(found))


def test_function_level_imports_of_gradscope_say_why():
    assert unexplained_function_level_imports() == []


# (importer, imported): a layer that must not import another, directly or through what it imports
FORBIDDEN = [
    ("gradscope.report", "gradscope.analysis"),
    ("gradscope.measure", "gradscope.analysis"),
    ("gradscope.models", "gradscope.cli"),
    ("gradscope.models", "gradscope.analyzer"),
    ("gradscope.stats", "gradscope.analysis"),
]


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, stack = set(), [start]
    while stack:
        node = stack.pop()
        for nxt in graph.get(node, ()):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


@pytest.mark.parametrize("importer, imported", FORBIDDEN)
def test_layers_import_one_way(importer, imported):
    graph = import_graph()
    for module in [m for m in graph if m == importer or m.startswith(importer + ".")]:
        reached = _reachable(graph, module)
        assert not any(r == imported or r.startswith(imported + ".") for r in reached), f"{module} -> {imported}"


@pytest.mark.slow
def test_import_gradscope_stays_light():
    code = ("import json, sys, gradscope, torch\n"
            "print(json.dumps({'modules': sorted(m for m in sys.modules if m.startswith('gradscope')),\n"
            "                  'heavy': [m for m in ('transformers', 'torchvision', 'matplotlib', 'pandas')\n"
            "                            if m in sys.modules],\n"
            "                  'cuda': torch.cuda.is_initialized()}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    loaded = json.loads(out.stdout)
    assert loaded["heavy"] == [] and loaded["cuda"] is False
    assert set(loaded["modules"]) <= {"gradscope", "gradscope._C", "gradscope._C_cuda", "gradscope._ext",
                                      "gradscope._lazy", "gradscope._reference", "gradscope.stats"}
