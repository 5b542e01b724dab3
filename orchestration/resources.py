"""Resources, chosen by environment (see `definitions.py`)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

from dagster import ConfigurableResource, StaticPartitionsDefinition

DEFAULT_RECIPE = "tiny-cpu"
# RecipeResource.load's last recipe: (file, its bytes, overrides) -> the validated Recipe.
_LOADED: dict[tuple[str, bytes, str], Any] = {}


def default_artifact_root() -> str:
    return os.environ.get("VLMRL_ARTIFACTS", str(Path.cwd() / "artifacts"))


def default_recipe() -> str:
    return os.environ.get("VLMRL_RECIPE", DEFAULT_RECIPE)


class ArtifactStore(ConfigurableResource):
    """Where large artefacts (frames, checkpoints, reports) live; assets pass paths.

    A local directory by default (``VLMRL_ARTIFACTS`` or ``artifacts/``). Nothing large
    goes through an IO manager: assets return paths and content hashes. The layout is
    fixed so that every step finds its inputs without asking the instance.
    """

    root: str = "artifacts"

    def path(self, *parts: str) -> Path:
        if "://" in self.root and not self.root.startswith("file://"):
            # Path("s3://b/p") is the local directory "s3:/b/p": refuse, never write there
            raise ValueError(
                f"VLMRL_ARTIFACTS={self.root!r}: the Dagster assets write to a local or mounted "
                "directory only (object storage: vlmrl.storage, not wired into the assets "
                "yet; see docs/deploy.md section 5)")
        p = Path(self.root.removeprefix("file://")).joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def raw(self) -> Path:
        return self.path("raw")

    def frames(self, name: str) -> Path:
        return self.path("frames", name)

    def checkpoint(self, stage: str) -> Path:
        return self.path("checkpoints", stage)

    def report(self, benchmark: str, stage: str, run_id: str) -> Path:
        return self.path("reports", benchmark, stage, run_id[:8])

    def asset_index(self) -> Path:
        return self.path("assets.json")


class RecipeResource(ConfigurableResource):
    """The recipe every asset reads: a shipped name or a YAML path (``VLMRL_RECIPE``).

    ``overrides`` is a JSON object merged into the recipe (per-run tweaks, shortened tests).
    """

    recipe: str = DEFAULT_RECIPE
    overrides: str = ""

    def load(self):
        """The recipe, read and validated once per file content and overrides; each call
        gets its own copy (every asset of a run loads it, and a stage may change its copy)."""
        from vlmrl.recipes import load_recipe, recipe_path

        path = recipe_path(self.recipe)
        key = (str(path.resolve()), path.read_bytes(), self.overrides)
        recipe = _LOADED.get(key)
        if recipe is None:
            recipe = load_recipe(self.recipe, json.loads(self.overrides) if self.overrides else None)
            if path.read_bytes() == key[1]:  # not cached if the file changed while it was read
                _LOADED.clear()  # one entry: the recipe of this process's runs
                _LOADED[key] = recipe
        return copy.deepcopy(recipe)

    def benchmark_partitions(self) -> StaticPartitionsDefinition:
        """One partition per benchmark the recipe evaluates on (the per-benchmark assets')."""
        return StaticPartitionsDefinition(self.load().benchmark_names())
