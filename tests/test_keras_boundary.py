"""Keras' private names are read in `kerascnn.keras_compat` only: anywhere else in ``kerascnn/`` a
``keras.src`` path or an underscore attribute that kerascnn does not define itself fails this test."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "kerascnn"
BOUNDARY = PACKAGE / "keras_compat.py"
# private names of other libraries, read knowingly (not Keras'): name -> whose
FOREIGN = {"_processes": "concurrent.futures' executor", "_is_amx_tile_supported": "torch.cpu",
           "_init_amx": "torch.cpu"}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _modules() -> dict[Path, ast.Module]:
    return {path: ast.parse(path.read_text(), str(path)) for path in sorted(PACKAGE.rglob("*.py"))}


def _defined_here(trees: dict[Path, ast.Module]) -> set[str]:
    """The private names kerascnn defines: functions, classes, attributes it assigns, parameters."""
    names: set[str] = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.isidentifier():
                names.add(node.value)  # __slots__ entries
    return {name for name in names if _private(name)}


def _base(node: ast.expr) -> str:
    while isinstance(node, (ast.Attribute, ast.Call, ast.Subscript)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else ""


def private_uses(path: Path, tree: ast.Module, own: set[str]) -> list[str]:
    """``path``'s uses of private names that are neither kerascnn's own nor in `FOREIGN`."""
    found = [f"{path.name}: 'keras.src'" for line in path.read_text().splitlines() if "keras.src" in line]
    for node in ast.walk(tree):
        name = None
        if isinstance(node, ast.Attribute) and _private(node.attr) and _base(node) not in ("self", "cls", "torch"):
            name = node.attr
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in ("getattr", "hasattr", "setattr", "delattr") and len(node.args) > 1 \
                and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str) \
                and _private(node.args[1].value):
            name = node.args[1].value
        if name is not None and name not in own and name not in FOREIGN:
            found.append(f"{path.name}:{node.lineno}: {name}")
    return found


def test_no_keras_private_name_outside_the_boundary_module():
    trees = _modules()
    own = _defined_here({p: t for p, t in trees.items() if p != BOUNDARY})
    found = [use for path, tree in trees.items() if path != BOUNDARY for use in private_uses(path, tree, own)]
    assert not found, f"Keras' private names outside kerascnn/keras_compat.py: {found}"


def test_the_check_finds_each_kind_of_private_use(tmp_path):
    """The check itself: a ``keras.src`` import, an underscore attribute and a getattr of one are each found."""
    path = tmp_path / "leaky.py"
    path.write_text("from keras.src.ops import numpy\n"
                    "def f(model, opt):\n"
                    "    return model._nodes_by_depth, getattr(opt, '_momentums'), self._mine\n")
    found = private_uses(path, ast.parse(path.read_text()), own=set())
    assert found == ["leaky.py: 'keras.src'", "leaky.py:3: _nodes_by_depth", "leaky.py:3: _momentums"]
