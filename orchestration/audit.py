"""Lineage audit of an asset: Dagster's record against the manifests on disk.

    python -m orchestration.audit rl_checkpoint
    python -m orchestration.audit "rl_report[synthetic]" --artifacts /copy/of/artifacts

Two records of the same history exist. The manifests (``lineage.json`` in every
checkpoint, ``manifest.json`` in every frame dataset, ``report.json`` in every report)
are authoritative for *content*: they hold the hashes, and `vlmrl.lineage.audit`
re-hashes every file on disk against them. Dagster's event log, which lives outside the
artifacts tree, is authoritative for *provenance*: which materialization consumed which
upstream data version, and the full content hash of each materialization. That hash is
the audit's anchor: an edit that recomputed every hash inside the tree still changes
the head's hash, which no longer matches the event log.

``--artifacts`` audits a copy of the tree: each materialization's recorded place inside
the tree (``artifact_path``) is looked up there, and no reference may leave it. On object
storage (``VLMRL_ARTIFACTS`` or ``--artifacts s3://...``) every artifact of the chain is
re-hashed where it is stored, pulled into the local cache, and audited there.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

from orchestration.resources import default_artifact_root
from vlmrl.artifact_root import ArtifactRoot
from vlmrl.lineage import Anchor, audit, format_chain, head_sha256, read_manifest

# which upstream asset holds each dataset role / the parent checkpoint
PARENT = {"sft_checkpoint": "base_model", "rl_checkpoint": "sft_checkpoint"}
DATASETS = {"base_model": ("sft_frames", "rl_frames"), "sft_checkpoint": ("sft_frames",),
            "rl_checkpoint": ("rl_frames",)}


def _latest(instance: DagsterInstance, key: str, partition: str | None = None) -> Any:
    """The newest materialization event of ``key`` (in ``partition``)."""
    if partition is None:
        event = instance.get_latest_materialization_event(AssetKey(key))
    else:
        records = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey(key), asset_partitions=[partition]), limit=1).records
        event = records[0].event_log_entry if records else None
    if event is None or event.asset_materialization is None:
        where = f"[{partition}]" if partition else ""
        raise LookupError(f"{key}{where} has never been materialized in {instance.root_directory}")
    return event


def located(mat: Any, root: Path | None) -> Path:
    """Where a materialization's files are: its recorded path, or its place in the tree ``root``."""
    recorded = Path(mat.metadata["path"].value)
    if root is None:
        return recorded
    if "artifact_path" in mat.metadata:
        return root / mat.metadata["artifact_path"].value
    try:  # recorded before artifact_path: relative to the artifact root of this environment
        return root / recorded.relative_to(Path(default_artifact_root()).resolve())
    except ValueError:
        return recorded  # left absolute: the confined audit refuses it if it is outside the tree


def cross_check(instance: DagsterInstance, key: str, root: Path | None = None) -> list[str]:
    """Problems where Dagster's record and the checkpoint manifests disagree, down the chain."""
    problems: list[str] = []
    while key:
        event = _latest(instance, key)
        mat = event.asset_materialization
        path = located(mat, root)
        try:
            manifest = read_manifest(path)
        except (FileNotFoundError, ValueError) as exc:  # the content audit names it too
            problems.append(f"{key}: {exc}")
            break
        tags = mat.tags or {}
        if tags.get("dagster/data_version") != head_sha256(path)[:16]:
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


def parse_key(text: str) -> tuple[str, str | None]:
    """``rl_report[synthetic]`` -> ("rl_report", "synthetic")."""
    if text.endswith("]") and "[" in text:
        key, partition = text[:-1].split("[", 1)
        return key, partition
    return text, None


def main(argv: list[str] | None = None, instance: DagsterInstance | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestration.audit", description=__doc__.split("\n\n")[0])
    parser.add_argument("key", help="base_model | sft_checkpoint | rl_checkpoint | {base,sft,rl}_report[BENCHMARK]")
    parser.add_argument("--artifacts", help="the artifacts tree to audit (default: each materialization's "
                        "recorded path, confined to the artifact root)")
    parser.add_argument("--input-root", action="append", default=[], metavar="DIR",
                        help="raw annotations/media kept outside the artifacts tree may lie here (repeatable)")
    parser.add_argument("--skip-media", action="store_true", help="do not re-hash media files")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    key, partition = parse_key(args.key)
    instance = instance or DagsterInstance.get()
    try:
        event = _latest(instance, key, partition)
    except LookupError as exc:
        print(f"audit: {exc}", file=sys.stderr)
        return 2
    mat = event.asset_materialization
    content = mat.metadata.get("content_hash")
    anchor = Anchor(content.value, f"the one Dagster recorded for {args.key} (run {event.run_id[:8]})") \
        if content is not None else None
    tree = ArtifactRoot(args.artifacts or default_artifact_root())
    if tree.remote:  # object storage: the stored chain re-hashed, pulled, then audited in the cache
        found = tree.audit(mat.metadata["artifact_path"].value, check_media=not args.skip_media,
                           input_roots=tuple(args.input_root), anchor=anchor)
        for p in found:
            print(f"PROBLEM: {p}")
        print(f"{tree.root}: the published chain of {args.key}: "
              + ("verified" if not found else f"{len(found)} problem(s)"))
        ok, root = not found, tree.local_root
        path = located(mat, root)
        readable = (path / "lineage.json").is_file()
    else:
        root = Path(tree.local_root).resolve()
        path = located(mat, root)
        report = audit(path, check_media=not args.skip_media, root=root, input_roots=tuple(args.input_root),
                       anchor=anchor)
        print(format_chain(report))
        ok, readable = report.ok, bool(report.chain and report.chain[0].manifest)
    problems = []
    if key in DATASETS and readable:  # a checkpoint whose manifest reads
        problems = cross_check(instance, key, root)
    for p in problems:
        print(f"DAGSTER/MANIFEST MISMATCH: {p}")
    print("Dagster's record agrees with the manifests" if not problems else f"{len(problems)} mismatch(es)")
    return 0 if ok and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
