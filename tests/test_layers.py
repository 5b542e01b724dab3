"""The library's layering, pinned: every import (module level or inside a function) of every
module under vlmrl/ goes down or sideways, never up.

    0  vlmrl (the package), atomic, hashing, json_view, storage  helpers everything may use
    1  data, rewards, models                          records, frames, rewards, model loading
    2  train, eval, lineage, artifact_root, rollout   the algorithms, evaluation, the audit,
                                                      the artifacts tree local or remote,
                                                      vLLM rollouts
    3  recipes                                        recipe files -> the train configs
    4  stages                                         a recipe -> a checkpoint or a report
    5  cli, doctor                                    the `vlmrl` command and its campaign

Modules of one layer may import each other (data.records checks solutions with the
rewards' scorers; lineage reads reports and frame datasets, and train reads lineage).
orchestration/ (Dagster) sits above all of them and nothing in vlmrl/ imports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import vlmrl

ROOT = Path(vlmrl.__file__).parent
LAYERS = (
    ("vlmrl", "vlmrl.atomic", "vlmrl.hashing", "vlmrl.json_view", "vlmrl.storage"),
    ("vlmrl.data", "vlmrl.rewards", "vlmrl.models"),
    ("vlmrl.train", "vlmrl.eval", "vlmrl.lineage", "vlmrl.artifact_root", "vlmrl.rollout"),
    ("vlmrl.recipes",),
    ("vlmrl.stages",),
    ("vlmrl.cli", "vlmrl.doctor"),
)
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    """The layer unit a module belongs to: vlmrl.<first part>, or the package itself."""
    return ".".join(module.split(".")[:2])


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, absolute module, imported names) of every import statement in the file."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importing package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((node.lineno, base, [alias.name for alias in node.names]))
    return found


MODULES = sorted(ROOT.rglob("*.py"))


def test_every_module_has_a_layer():
    assert MODULES
    unplaced = sorted({module_name(p) for p in MODULES if unit_of(module_name(p)) not in RANK})
    assert not unplaced, f"give these a layer in {__file__}: {unplaced}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_go_down_or_sideways(path):
    here = unit_of(module_name(path))
    upward = []
    for line, target, _ in imports(path):
        top = target.split(".")[0]
        if top == "orchestration":
            upward.append(f"line {line}: {target} (vlmrl never imports orchestration)")
        elif top == "vlmrl" and RANK.get(unit_of(target), len(LAYERS)) > RANK[here]:
            upward.append(f"line {line}: {target} (layer {RANK.get(unit_of(target), '?')} > {RANK[here]})")
    assert not upward, f"{module_name(path)} (layer {RANK[here]}) imports upward: {upward}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_no_private_name_crosses_packages(path):
    here = unit_of(module_name(path))
    crossing = [f"line {line}: {name} from {target}" for line, target, names in imports(path)
                for name in names
                if target.startswith("vlmrl") and unit_of(target) != here
                and name.startswith("_") and not name.startswith("__")]
    assert not crossing, f"{module_name(path)} imports private names of another package: {crossing}"
