"""The fedpeft modules a notebook needs: its own imports and everything they import in turn (read from the source,
not by importing). Used to check that each DVC stage lists exactly what can change its results."""

from __future__ import annotations

import ast
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "lib"


def _module_file(dotted: str) -> Path | None:
    base = LIB / dotted.replace(".", "/")
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    return None


def _dotted(path: Path) -> str:
    rel = path.relative_to(LIB).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imported_modules(source: str, package: str) -> set[str]:
    """Dotted fedpeft modules imported by ``source`` (relative imports resolved against ``package``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "fedpeft"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != "fedpeft":
                continue
            found.add(module)
            found |= {f"{module}.{a.name}" for a in node.names}
    return {m for m in found if _module_file(m) is not None}


def _documentation_only(path: Path) -> bool:
    """A package ``__init__`` holding only a docstring and constants (no imports, no code) cannot change a
    result, so editing its prose should not rerun a stage."""
    body = ast.parse(path.read_text()).body
    return path.name == "__init__.py" and all(
        isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        or isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
        for node in body
    )


def closure(modules: set[str]) -> set[Path]:
    """Files of ``modules``, their parent packages' ``__init__``, and all they import, transitively."""
    seen: set[Path] = set()
    todo = list(modules)
    while todo:
        dotted = todo.pop()
        parts = dotted.split(".")
        for i in range(1, len(parts) + 1):
            path = _module_file(".".join(parts[:i]))
            if path is None or path in seen:
                continue
            seen.add(path)
            package = _dotted(path) if path.name == "__init__.py" else ".".join(_dotted(path).split(".")[:-1])
            todo += imported_modules(path.read_text(), package)
    return seen


def notebook_dependencies(notebook: Path) -> set[str]:
    """Repository-relative paths of every fedpeft source file the notebook's code can reach (documentation-only
    package ``__init__`` files left out)."""
    cells = json.loads(notebook.read_text())["cells"]
    source = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    return {p.relative_to(ROOT).as_posix() for p in closure(imported_modules(source, "fedpeft")) if not _documentation_only(p)}


def command_dependencies(cmd: str) -> set[str]:
    """Repository-relative paths of every fedpeft source file a stage command runs (``python -m fedpeft...``)."""
    import re

    modules = set(re.findall(r"python -m (fedpeft[\w.]*)", cmd))
    return {p.relative_to(ROOT).as_posix() for p in closure(modules) if not _documentation_only(p)}


def stage_dependencies(stage: dict) -> set[str]:
    """Every fedpeft file a stage can reach: through its notebooks and through its command."""
    deps = set(command_dependencies(stage.get("cmd", "")))
    for nb in (d for d in stage.get("deps", []) if d.startswith("notebooks/")):
        deps |= notebook_dependencies(ROOT / nb)
    return deps


def write_stage_deps(pipeline: Path) -> bool:
    """Rewrite each stage's ``deps`` in ``pipeline`` (a dvc.yaml) to its notebook plus exactly the fedpeft files
    the notebook reaches, keeping other deps; returns whether the file changed. Run as
    ``python tests/module_deps.py`` after moving or adding a module."""
    import re

    import yaml

    text = pipeline.read_text()
    stages = yaml.safe_load(text)["stages"]
    for name, stage in stages.items():
        deps = stage.get("deps", [])
        wanted = [d for d in deps if not d.startswith("lib/fedpeft/")] + sorted(stage_dependencies(stage))
        block = re.search(rf"(\n  {re.escape(name)}:\n(?:    .*\n|\n)*?    deps:\n)((?:      - .*\n)+)", text)
        if block is None:
            raise ValueError(f"stage {name} of {pipeline} has no deps block to rewrite")
        text = text[: block.start(2)] + "".join(f"      - {d}\n" for d in wanted) + text[block.end(2):]
    changed = text != pipeline.read_text()
    pipeline.write_text(text)
    return changed


if __name__ == "__main__":
    for path in [ROOT / "dvc.yaml", *sorted((ROOT / "pipelines").glob("*/dvc.yaml"))]:
        print(path.relative_to(ROOT), "updated" if write_stage_deps(path) else "unchanged")
