"""Lineage audit of a checkpoint asset: Dagster's record against the checkpoint manifests.

    python -m orchestration.audit rl_checkpoint

Two records of the same history exist. The manifests (``lineage.json`` in every
checkpoint, ``manifest.json`` in every frame dataset) are authoritative for *content*:
they hold the hashes, and `vlmrl.lineage.audit` re-hashes every file on disk against
them. Dagster's event log is authoritative for *provenance*: which materialization
(run id) consumed which upstream data version. Because data versions are prefixes of
the same content hashes, the two can be cross-checked; this module does that and then
runs the content audit.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from dagster import AssetKey, DagsterInstance

from vlmrl.lineage import audit, format_chain, lineage_hash, read_manifest

# which upstream asset holds each dataset role / the parent checkpoint
PARENT = {"sft_checkpoint": "base_model", "rl_checkpoint": "sft_checkpoint"}
DATASETS = {"base_model": ("sft_frames", "rl_frames"), "sft_checkpoint": ("sft_frames",),
            "rl_checkpoint": ("rl_frames",)}


def _latest(instance: DagsterInstance, key: str) -> Any:
    event = instance.get_latest_materialization_event(AssetKey(key))
    if event is None or event.asset_materialization is None:
        raise LookupError(f"{key} has never been materialized in {instance.root_directory}")
    return event


def cross_check(instance: DagsterInstance, key: str) -> list[str]:
    """Problems where Dagster's record and the checkpoint manifests disagree, down the chain."""
    problems: list[str] = []
    while key:
        event = _latest(instance, key)
        mat = event.asset_materialization
        path = Path(mat.metadata["path"].value)
        manifest = read_manifest(path)
        tags = mat.tags or {}
        if tags.get("dagster/data_version") != lineage_hash(path)[:16]:
            problems.append(f"{key}: Dagster data version {tags.get('dagster/data_version')} is not the "
                            f"lineage hash of {path / 'lineage.json'}")
        named = manifest.get("tracking", {}).get("dagster_run_id")
        if named and named != event.run_id:
            problems.append(f"{key}: lineage.json names Dagster run {named}, the event log {event.run_id}")
        recorded = {Path(d["path"]).name: d["fingerprint"][:16] for d in manifest.get("datasets", [])}
        for upstream in DATASETS.get(key, ()):
            consumed = tags.get(f"dagster/input_data_version/{upstream}")
            name = upstream.removesuffix("_frames")
            if consumed is not None and recorded.get(name) != consumed:
                problems.append(f"{key}: consumed {upstream} data version {consumed}, but lineage.json records "
                                f"{recorded.get(name)}")
        parent = PARENT.get(key)
        if parent:
            consumed = tags.get(f"dagster/input_data_version/{parent}")
            expected = (manifest.get("parent") or {}).get("lineage_sha256", "")[:16]
            if consumed is not None and consumed != expected:
                problems.append(f"{key}: consumed {parent} data version {consumed}, but lineage.json's parent "
                                f"hash is {expected}")
        key = parent
    return problems


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m orchestration.audit ASSET_KEY (base_model | sft_checkpoint | rl_checkpoint)",
              file=sys.stderr)
        return 2
    key = argv[0]
    instance = DagsterInstance.get()
    path = Path(_latest(instance, key).asset_materialization.metadata["path"].value)
    report = audit(path)
    print(format_chain(report))
    problems = cross_check(instance, key)
    for p in problems:
        print(f"DAGSTER/MANIFEST MISMATCH: {p}")
    print("Dagster's record agrees with the manifests" if not problems else f"{len(problems)} mismatch(es)")
    return 0 if report.ok and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
