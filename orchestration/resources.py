"""Resources, chosen by environment (see `definitions.py`)."""

from __future__ import annotations

import os
from pathlib import Path

from dagster import ConfigurableResource


class ArtifactStore(ConfigurableResource):
    """Where large artefacts (frames, checkpoints, reports) live; assets pass paths.

    A local directory by default (``VLMRL_ARTIFACTS`` or ``artifacts/``). Nothing large
    goes through an IO manager: assets return paths and content hashes.
    """

    root: str = "artifacts"

    def path(self, *parts: str) -> Path:
        p = Path(self.root).joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p


def default_artifact_root() -> str:
    return os.environ.get("VLMRL_ARTIFACTS", str(Path.cwd() / "artifacts"))
