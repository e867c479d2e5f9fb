"""The library's layers: a module imports only from its own layer and those below it (see fedpeft/__init__.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "lib" / "fedpeft"
LAYERS = ["core", "data", "quantization", "models", "training", "federated", "reporting", "experiments"]


def _layer(dotted: str) -> str | None:
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "fedpeft" else None


def upward_imports(path: Path) -> list[str]:
    """``"module -> imported"`` for every fedpeft import of ``path`` that points to a higher layer."""
    own = path.relative_to(LIB).parts[0]
    bad = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            bad.append(f"{path.name}: relative import (use absolute fedpeft.<layer> imports)")
            continue
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        for name in names:
            layer = _layer(name)
            if layer is not None and LAYERS.index(layer) > LAYERS.index(own):
                bad.append(f"{path.relative_to(LIB)} imports {name}")
    return bad


def test_every_module_sits_in_a_layer():
    loose = [p.name for p in LIB.glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert not loose, f"modules outside every layer: {loose}; move them into one of {LAYERS}"
    assert sorted(p.name for p in LIB.iterdir() if p.is_dir() and (p / "__init__.py").exists()) == sorted(LAYERS)


@pytest.mark.parametrize("layer", LAYERS)
def test_imports_point_down(layer):
    bad = [b for path in sorted((LIB / layer).rglob("*.py")) for b in upward_imports(path)]
    assert not bad, "upward imports: " + "; ".join(bad)


def test_the_check_catches_an_upward_import(monkeypatch):
    probe = LIB / "core" / "probe.py"
    monkeypatch.setattr(Path, "read_text", lambda self: "from fedpeft.federated.loop import run_federated\n")
    assert upward_imports(probe) == ["core/probe.py imports fedpeft.federated.loop"]


def test_package_docstring_names_every_subpackage():
    import fedpeft

    for layer in LAYERS:
        assert f"``{layer}``" in fedpeft.__doc__, f"fedpeft/__init__.py does not describe {layer}"
