"""Resources, chosen by environment (see `definitions.py`)."""

from __future__ import annotations

import copy
import functools
import json
import os
from pathlib import Path
from typing import Any

from dagster import ConfigurableResource, StaticPartitionsDefinition

from vlmrl.artifact_root import ArtifactRoot

DEFAULT_RECIPE = "tiny-cpu"
# RecipeResource.load's last recipe: (file, its bytes, overrides) -> the validated Recipe.
_LOADED: dict[tuple[str, bytes, str], Any] = {}


def default_artifact_root() -> str:
    return os.environ.get("VLMRL_ARTIFACTS", str(Path.cwd() / "artifacts"))


def default_recipe() -> str:
    return os.environ.get("VLMRL_RECIPE", DEFAULT_RECIPE)


@functools.lru_cache(maxsize=8)
def _tree(root: str, cache: str | None) -> ArtifactRoot:
    return ArtifactRoot(root, cache)


class ArtifactStore(ConfigurableResource):
    """Where large artefacts (frames, checkpoints, reports) live; assets pass paths.

    A local directory by default (``VLMRL_ARTIFACTS`` or ``artifacts/``), or object storage
    (``VLMRL_ARTIFACTS=s3://bucket/prefix``; vlmrl.artifact_root). Nothing large goes
    through an IO manager: assets return paths and content hashes. The layout is fixed so
    that every step finds its inputs without asking the instance.

    With object storage, every step works in a local cache with the same layout (``cache``,
    else ``VLMRL_CACHE``, else ``~/.cache/vlmrl/artifacts/...``): it `pull`s its inputs
    (downloaded once, verified), writes its output there, and `push`es it (published with a
    marker written last, so no reader sees a partial upload as complete). On a local root
    `pull` and `push` change nothing.
    """

    root: str = "artifacts"
    cache: str | None = None

    def tree(self) -> ArtifactRoot:
        return _tree(self.root, self.cache or os.environ.get("VLMRL_CACHE"))

    @property
    def remote(self) -> bool:
        return self.tree().remote

    @property
    def local_root(self) -> Path:
        """The tree this process reads and writes: the root itself, or its local cache."""
        return self.tree().local_root

    def path(self, *parts: str) -> Path:
        return self.tree().local(*parts)

    def _parts(self, path: Path) -> str:
        try:
            return Path(path).relative_to(self.local_root).as_posix()
        except ValueError:
            raise ValueError(f"{path} is not in the artifacts tree {self.local_root}") from None

    def pull(self, path: Path) -> Path:
        """The published artifact at ``path`` (from ``path()``/``frames()``...) made available
        locally: downloaded unless the local copy already matches; NotPublishedError if it was
        never published completely."""
        return self.tree().pull(self._parts(path))

    def push(self, path: Path) -> str:
        """Publish the finished artifact at ``path``; where it now lives (URI or local path)."""
        return self.tree().push(self._parts(path))

    def uri(self, path: Path) -> str:
        """Where the artifact at ``path`` lives for everyone: its URI, or the local path."""
        return self.tree().uri(self._parts(path))

    def record(self, key: str, entry: dict[str, Any]) -> None:
        """The asset index entry of ``key`` (``vlmrl lineage <asset key>`` reads it)."""
        self.tree().record(key, entry)

    def raw(self) -> Path:
        return self.path("raw")

    def frames(self, name: str) -> Path:
        return self.path("frames", name)

    def checkpoint(self, stage: str) -> Path:
        return self.path("checkpoints", stage)

    def report(self, benchmark: str, stage: str, run_id: str) -> Path:
        return self.path("reports", benchmark, stage, run_id[:8])


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
