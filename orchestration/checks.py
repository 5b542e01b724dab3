# No `from __future__ import annotations` here: Dagster reads the check's annotations at runtime.
"""The one pattern of every asset check: a named verdict on an asset, from its files."""

from collections.abc import Callable

from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetChecksDefinition, asset_check

from orchestration.resources import ArtifactStore

Evaluate = Callable[[AssetCheckExecutionContext, ArtifactStore], AssetCheckResult]


def artifact_check(asset: str, what: str, evaluate: Evaluate, *, blocking: bool,
                   description: str) -> AssetChecksDefinition:
    """The check ``<asset>_<what>``: ``evaluate(context, artifacts)`` judges the asset's files.

    A blocking check stops the steps downstream of its asset when it fails (training on an
    empty dataset, evaluating a checkpoint that does not load).
    """
    @asset_check(asset=asset, name=f"{asset}_{what}", blocking=blocking, description=description)
    def _check(context: AssetCheckExecutionContext, artifacts: ArtifactStore) -> AssetCheckResult:
        return evaluate(context, artifacts)

    return _check
