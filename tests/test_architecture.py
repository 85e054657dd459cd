"""The layering and safety rules of the code base, checked on its source with ast.

Layers, lowest first; a module imports only its own layer and those below it (function-local imports
included):

    data -> utils -> models -> deploy -> engine -> d3n_ext -> scripts -> benchmarks

`data/` (generators, converters) is the floor: utils/data_config reaches its generators by name. utils/ is
a leaf of helpers; models/ is what a network is; deploy/ writes export formats and reads them back
(runtimes, int8) and needs no training or evaluation loop; engine/ trains, validates and predicts with a
model or an export and defines the plug-in interface; d3n_ext/ is the plug-in over all of these, and the
core scripts never name it (they reach it through engine.plugins and plugins.yaml); the top-level scripts (train, val, detect, export, train_distill,
extract_features, segment/) are what people run, so no library imports them; benchmarks/ may use anything.
And no import cycle among the project's own modules, whatever the layers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("data", "utils", "models", "engine", "deploy", "d3n_ext", "segment", "benchmarks")
SOURCES = sorted(p for d in PACKAGES for p in (REPO / d).rglob("*.py")) + sorted(REPO.glob("*.py"))
SCRIPTS = ("train", "val", "detect", "export", "train_distill", "extract_features", "segment", "hubconf")
LAYERS = ("data", "utils", "models", "deploy", "engine", "d3n_ext", "scripts", "benchmarks")
KNOWN_SCRIPT_IMPORTS: dict[str, str] = {}  # library -> script imports that exist today; strict, so fixing one fails
CORE_SCRIPTS = ("train.py", "train_distill.py", "val.py", "detect.py", "export.py")  # join plug-ins only via engine


def _tree(path: Path) -> ast.AST:
    return ast.parse(path.read_text(), filename=str(path))


def _imported_modules(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in SOURCES}


def _own_imports(path: Path) -> set[str]:
    """The project modules `path` imports anywhere in it, each named as precisely as the import allows
    (`from utils import boxes` -> utils.boxes); relative imports are resolved."""
    name, found = _module_name(path), set()
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            candidates = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in MODULES:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name:
                found.add(candidate)
    return found


def _layer(module: str) -> str:
    top = module.split(".")[0]
    return "scripts" if top in SCRIPTS else top


def _layer_param(path: Path):
    rel = str(path.relative_to(REPO))
    if rel in KNOWN_SCRIPT_IMPORTS:
        return pytest.param(path, marks=pytest.mark.xfail(strict=True, reason=KNOWN_SCRIPT_IMPORTS[rel]), id=rel)
    return pytest.param(path, id=rel)


@pytest.mark.parametrize("path", [_layer_param(p) for p in SOURCES])
def test_each_layer_imports_only_the_layers_below_it(path):
    own = LAYERS.index(_layer(_module_name(path)))
    above = sorted(m for m in _own_imports(path) if LAYERS.index(_layer(m)) > own)
    assert not above, (f"{path.relative_to(REPO)} ({_layer(_module_name(path))}) imports "
                       f"{', '.join(f'{m} ({_layer(m)})' for m in above)}; layers, lowest first: {' -> '.join(LAYERS)}")


def _cycle_through(start: str, graph: dict[str, set[str]]) -> list[str] | None:
    """The shortest import path start -> ... -> start, or None (breadth-first)."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for module in frontier:
            for imported in sorted(graph[module]):
                if imported == start:
                    path = [module]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if imported not in previous:
                    previous[imported] = module
                    following.append(imported)
        frontier = following
    return None


def test_no_import_cycles():
    graph = {name: _own_imports(path) for name, path in MODULES.items()}
    cycles, seen = [], set()
    for module in sorted(graph):
        if module in seen:
            continue
        cycle = _cycle_through(module, graph)
        if cycle:
            seen.update(cycle)
            cycles.append(" -> ".join(cycle))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


CORE = [p for p in SOURCES if p.relative_to(REPO).parts[0] in ("models", "utils", "engine", "deploy")] + \
    [REPO / name for name in CORE_SCRIPTS]


@pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(REPO)))
def test_core_and_its_scripts_never_import_the_plugin(path):
    assert not any(m == "d3n_ext" or m.startswith("d3n_ext.") for m in _imported_modules(_tree(path)))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_eval_or_exec(path):
    calls = [n.func.id for n in ast.walk(_tree(path)) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    assert not {"eval", "exec"} & set(calls)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_torch_load_is_always_weights_only(path):
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
            kw = {k.arg: k.value for k in node.keywords}
            assert isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True, \
                f"{path}:{node.lineno}: torch.load without weights_only=True"
