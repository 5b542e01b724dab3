"""Resources, chosen by environment (see `definitions.py`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from dagster import ConfigurableResource, StaticPartitionsDefinition

DEFAULT_RECIPE = "tiny-cpu"


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
        p = Path(self.root).joinpath(*parts)
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
        from vlmrl.recipes import load_recipe

        return load_recipe(self.recipe, json.loads(self.overrides) if self.overrides else None)

    def benchmark_partitions(self) -> StaticPartitionsDefinition:
        """One partition per benchmark the recipe evaluates on (the per-benchmark assets')."""
        return StaticPartitionsDefinition(self.load().benchmark_names())
