"""The layering and safety rules of the code base, checked on its source with ast."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("models", "utils", "d3n_ext", "data") for p in (REPO / d).rglob("*.py")) + \
    sorted(REPO.glob("*.py"))


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


@pytest.mark.parametrize("path", [p for p in SOURCES if p.parent.name in ("models", "utils")], ids=lambda p: p.name)
def test_core_never_imports_the_plugin(path):
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
