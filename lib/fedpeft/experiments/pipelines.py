"""The study's DVC pipelines, one per profile, rendered from the experiment registry and the run plans in
``params/``: ``python -m fedpeft.experiments.pipelines`` (``make pipelines``) writes ``dvc.yaml`` and ``pipelines/<profile>/dvc.yaml``.

Each stage lists exactly the fedpeft source files that can change its results: the modules its notebook and its
command import, and everything they import in turn, read from the source (not by importing), so an edit to a figure
function reruns no training and an edit to a trainer reruns every run that reaches it."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from fedpeft.core import registry
from fedpeft.core.config import REPO_ROOT

ROOT = REPO_ROOT
LIB = Path(__file__).resolve().parents[2]


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


PIPELINES = {"embedded": "dvc.yaml", "local": "pipelines/local/dvc.yaml", "paper": "pipelines/paper/dvc.yaml"}
RUN_STAGE_CMD = "python -m fedpeft.experiments.runs"


def _module_paths(modules: set[str]) -> list[str]:
    return sorted(p.relative_to(ROOT).as_posix() for p in closure(modules) if not _documentation_only(p))


def _persisting(path: str, extra: str = "") -> str:
    return f"      - {path}:\n          cache: false\n          persist: true\n{extra}"


def run_stage_dependencies(experiment: str) -> list[str]:
    """The fedpeft files an experiment's run stages reach: the run-stage command and the experiment's runs module."""
    return _module_paths({"fedpeft.experiments.runs", f"{registry.get(experiment).package}.runs"})


def render_pipeline(profile: str) -> str:
    """The whole dvc.yaml of ``profile``: per split experiment a ``<name>_run`` stage over its planned run ids
    (``foreach``) and a report stage that reads their records; the other experiments as one notebook stage; then
    the summary. Rendered from the run plans in params/<profile>.yaml, so it must be rendered again
    (``make pipelines``) after a change that adds or removes runs (seeds, partitions)."""
    from fedpeft.experiments import runs as run_stages

    root = "." if profile == "embedded" else "../.."
    where = "The default: `dvc repro` (or `make repro`) runs it." if profile == "embedded" else (
        f"Run it with `make repro PROFILE={profile}` (= `dvc repro {PIPELINES[profile]}`).")
    out = [f"# The {profile} profile's pipeline. {where}",
           "# Rendered by `make pipelines` (python -m fedpeft.experiments.pipelines) from the run plans in params/ and the modules each stage",
           "# reaches; tests/test_environment.py fails when this file and a fresh rendering differ. Do not edit by hand.",
           "vars:", f"  - profile: {profile}", f"    root: {root}", "", "stages:"]
    experiments = registry.experiments()
    for declared in experiments:
        experiment, notebook, (x, y) = declared.name, declared.notebook, declared.history
        report_deps = [notebook]
        settings = declared.load(profile)
        specs = declared.run_specs(settings)
        data_deps = []
        if declared.data_files(settings):  # the data-root files its runs read: a lock stage, on which every run depends
            lock = f"results/${{profile}}/data_lock/{experiment}.json"
            out += [f"  data_lock_{experiment}:", "    wdir: ${root}",
                    f"    cmd: exec python -m fedpeft.experiments.data_lock --profile ${{profile}} --experiment {experiment}",
                    "    always_changed: true", "    deps:",
                    *[f"      - {d}" for d in _module_paths({"fedpeft.experiments.data_lock", f"{declared.package}.settings"})],
                    "    params:", "      - params/${profile}.yaml:", "          - common.data_root", f"          - {experiment}",
                    "    outs:", _persisting(lock).rstrip("\n"), ""]
            data_deps = [lock]
        for kind in dict.fromkeys(spec.kind for spec in specs):
            ids = [spec.run_id for spec in specs if spec.kind == kind]
            keys = run_stages.run_keys(experiment, settings.params, kind)
            out += [f"  {experiment}_{kind}:", "    foreach:", *[f"      - {i}" for i in ids], "    do:", "      wdir: ${root}",
                    "      cmd: >-", f"        exec {RUN_STAGE_CMD} --profile ${{profile}} --experiment {experiment}",
                    "        --run ${item} --no-progress", "      deps:",
                    *[f"        - {d}" for d in [*data_deps, *run_stage_dependencies(experiment)]],
                    "      params:", "        - params/${profile}.yaml:", "            - common.data_root",
                    *[f"            - {experiment}.{k}" for k in keys],
                    "      outs:", f"        - results/${{profile}}/{experiment}/${{item}}:", "            cache: false",
                    "            persist: true", ""]
        report_deps += [f"results/${{profile}}/{experiment}/{spec.run_id}" for spec in specs]
        stage = {"cmd": "exec python -m fedpeft.reporting.notebook_stage", "deps": report_deps}
        report_deps += sorted(stage_dependencies(stage))
        report_deps += list(declared.report_inputs)
        out += [f"  {experiment}:", "    wdir: ${root}", "    cmd: >-",
                "      exec python -m fedpeft.reporting.notebook_stage --profile ${profile}",
                f"      --experiment {experiment} --notebook {notebook}", "    deps:", *[f"      - {d}" for d in report_deps],
                "    params:", "      - params/${profile}.yaml:", "          - common", f"          - {experiment}",
                "    outs:", _persisting(f"reports/${{profile}}/{experiment}").rstrip("\n"),
                "    metrics:", _persisting(f"reports/${{profile}}/metrics/{experiment}.json").rstrip("\n"),
                "    plots:", _persisting(f"reports/${{profile}}/plots/{experiment}_history.csv",
                                          f"          x: {x}\n          y: {y}\n").rstrip("\n"), ""]
    # the registry imports each experiment's declaration by name (not seen in the imports): its order and titles
    declarations = _module_paths({f"{e.package}.experiment" for e in experiments})
    summary_deps = ([f"reports/${{profile}}/{e}" for e in registry.names()] + [f"results/${{profile}}/{e}" for e in registry.names()]
                    + sorted(set(_module_paths({"fedpeft.reporting.summary"})) | set(declarations)))
    out += ["  summary:", "    wdir: ${root}", "    cmd: python -m fedpeft.reporting.summary --profile ${profile}", "    deps:",
            *[f"      - {d}" for d in summary_deps], "    outs:", _persisting("reports/${profile}/SUMMARY.md").rstrip("\n"),
            _persisting("reports/${profile}/verdicts.png").rstrip("\n"), _persisting("reports/${profile}/verdicts.pdf").rstrip("\n"), ""]
    site_deps = [*(f"reports/${{profile}}/{e}" for e in registry.names()), "reports/${profile}/SUMMARY.md", "reports/${profile}/verdicts.png",
                 *(f"results/${{profile}}/{e}" for e in registry.names()), "site/style.css", "site/ledger.js",
                 *sorted(set(_module_paths({"fedpeft.experiments.site"})) | set(declarations))]
    # no outs: the site is a build (build/site/<profile>, ignored by git), so a fresh clone's pipeline stays up to date;
    # `make site` builds it directly
    out += ["  site:", "    wdir: ${root}", "    cmd: python -m fedpeft.experiments.site --profile ${profile}", "    deps:",
            *[f"      - {d}" for d in site_deps]]
    return "\n".join(out) + "\n"


def main() -> None:
    for profile, rel in PIPELINES.items():
        path = ROOT / rel
        text = render_pipeline(profile)
        changed = not path.is_file() or path.read_text() != text
        path.write_text(text)
        print(rel, "updated" if changed else "unchanged")


if __name__ == "__main__":
    main()
