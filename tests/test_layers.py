"""pipeline/'s floors (pipeline.LAYERS): no module imports from a floor above its own, and nothing sits loose.

Imports are read with ast, so an import inside a function counts as much as one at the top of a file.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pipeline

ROOT = Path(__file__).resolve().parents[1]


def floor_of(name: str, layers) -> int | None:
    """The floor of 'pipeline.X...' (X a package or a loose module), or None for anything outside pipeline."""
    parts = name.split(".")
    if parts[0] != "pipeline" or len(parts) < 2:
        return None
    return next((i for i, floor in enumerate(layers) if parts[1] in floor), -1)


def imported_names(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, dotted name) of every pipeline import in the file; relative imports resolved against ``module``."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")[: -node.level]
                base = ".".join(package + ([base] if base else []))
            # 'from pipeline import study' names the package itself
            names += [(node.lineno, f"{base}.{a.name}" if base == "pipeline" else base) for a in node.names]
    return names


def layer_violations(root: Path, layers) -> list[str]:
    """'file:line: imports X (floor i) from floor j' for every upward import under root/pipeline and
    root/experiments; 'file: loose in pipeline/' for a module or package LAYERS does not name."""
    problems = []
    for path in sorted((root / "pipeline").rglob("*.py")):
        rel = path.relative_to(root)
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        if module == "pipeline":
            continue
        own = floor_of(module, layers)
        if own == -1:
            problems.append(f"{rel}: loose in pipeline/ (not in pipeline.LAYERS)")
            continue
        for line, name in imported_names(path, module):
            floor = floor_of(name, layers)
            if floor is not None and floor > own:
                problems.append(f"{rel}:{line}: imports {name} (floor {floor}) from floor {own}")
    for path in sorted((root / "experiments").glob("*.py")):
        for line, name in imported_names(path, "experiments." + path.stem):
            floor = floor_of(name, layers)
            if floor is not None and floor > 0:
                problems.append(f"{path.relative_to(root)}:{line}: experiments may import the ground floor only, not {name}")
    return problems


def test_no_module_imports_from_a_floor_above_its_own():
    assert layer_violations(ROOT, pipeline.LAYERS) == []


def test_every_package_and_loose_module_is_on_a_floor():
    on_disk = {p.stem for p in (ROOT / "pipeline").glob("*.py")} - {"__init__"}
    on_disk |= {p.name for p in (ROOT / "pipeline").iterdir() if (p / "__init__.py").exists()}
    assert on_disk == {name for floor in pipeline.LAYERS for name in floor}


def copy_of_the_code(tmp_path: Path) -> Path:
    for folder in ("pipeline", "experiments"):
        shutil.copytree(ROOT / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_an_upward_import_is_caught(tmp_path):
    root = copy_of_the_code(tmp_path)
    boxes = root / "pipeline" / "model" / "boxes.py"
    boxes.write_text(boxes.read_text() + "\n\ndef _late():\n    from pipeline.study.sweep import run_sweep\n")
    problems = layer_violations(root, pipeline.LAYERS)
    assert len(problems) == 1 and problems[0].startswith("pipeline/model/boxes.py:")
    assert "imports pipeline.study.sweep (floor 6) from floor 2" in problems[0]


def test_relative_and_package_imports_are_read(tmp_path):
    root = copy_of_the_code(tmp_path)
    (root / "pipeline" / "data" / "sneaky.py").write_text("from .. import report\nfrom pipeline import terminal\n")
    assert layer_violations(root, pipeline.LAYERS) == [
        "pipeline/data/sneaky.py:1: imports pipeline.report (floor 7) from floor 1",
        "pipeline/data/sneaky.py:2: imports pipeline.terminal (floor 8) from floor 1"]


def test_a_loose_module_and_an_experiment_reaching_up_are_caught(tmp_path):
    root = copy_of_the_code(tmp_path)
    (root / "pipeline" / "helpers.py").write_text("")
    (root / "experiments" / "peek.py").write_text("from pipeline.training.train import fit\n")
    assert layer_violations(root, pipeline.LAYERS) == [
        "pipeline/helpers.py: loose in pipeline/ (not in pipeline.LAYERS)",
        "experiments/peek.py:1: experiments may import the ground floor only, not pipeline.training.train"]
