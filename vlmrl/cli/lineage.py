"""``vlmrl lineage``: print and verify a checkpoint's or report's chain to its raw inputs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _remote_lineage(args: argparse.Namespace, tree: Any) -> int:
    """The audit of an artifact on object storage: its key in the store's index, or its path
    in the tree (e.g. checkpoints/rl); every artifact of its chain re-hashed where it is
    stored, pulled into the local cache and audited there (vlmrl.artifact_root)."""
    from vlmrl.lineage import Anchor, mlflow_anchor

    entry = tree.lookup(args.target) or {}
    rel = entry.get("path", args.target)
    anchor, problems = None, []
    if args.expect_sha256:
        anchor = Anchor(args.expect_sha256, "the hash given with --expect-sha256")
    elif args.tracking_uri:
        try:
            if not entry.get("mlflow_run_id"):
                raise LookupError(f"{args.target} names no MLflow run (give the asset key, e.g. rl_checkpoint)")
            anchor = mlflow_anchor(args.tracking_uri, entry["mlflow_run_id"])
        except LookupError as exc:
            problems.append(f"the head cannot be checked against MLflow: {exc}")
    problems += tree.audit(rel, check_media=not args.skip_media, input_roots=tuple(args.input_root),
                           anchor=anchor)
    if args.json:
        print(json.dumps({"ok": not problems, "problems": problems, "uri": tree.uri(rel),
                          "cache": str(tree.local(rel))}, indent=1))
    else:
        for p in problems:
            print(f"PROBLEM: {p}")
        print(f"{tree.uri(rel)}: the published chain " + ("verified" if not problems else
                                                           f"has {len(problems)} problem(s)"))
    return 0 if not problems else 1


def cmd_lineage(args: argparse.Namespace) -> int:
    from vlmrl.artifact_root import ArtifactRoot
    from vlmrl.lineage import (
        ASSET_INDEX,
        Anchor,
        audit,
        find_asset,
        find_root,
        format_chain,
        is_report,
        mlflow_anchor,
        read_manifest,
    )

    tree = ArtifactRoot(args.artifacts)
    if tree.remote:
        return _remote_lineage(args, tree)
    target, entry = find_asset(args.target, Path(args.artifacts) / ASSET_INDEX)
    root = find_root(target, args.artifacts)
    if root is None:
        print(f"vlmrl: note: no artifacts root holds {target} (no {ASSET_INDEX} above it, not under "
              f"--artifacts {args.artifacts}): references are followed wherever they lead", file=sys.stderr)
    anchor, unanchored = None, None
    if args.expect_sha256:
        anchor = Anchor(args.expect_sha256, "the hash given with --expect-sha256")
    elif args.tracking_uri:  # the head's hash as the MLflow run that materialized it recorded it
        run_id = entry.get("mlflow_run_id")
        if not run_id and not is_report(target) and (Path(target) / "lineage.json").is_file():
            run_id = read_manifest(target).get("tracking", {}).get("mlflow_run_id")
        try:
            if not run_id:
                raise LookupError(f"{target} names no MLflow run (give the asset key, e.g. rl_checkpoint)")
            anchor = mlflow_anchor(args.tracking_uri, run_id)
        except LookupError as exc:
            unanchored = f"the head cannot be checked against MLflow: {exc}"
    report = audit(target, check_media=not args.skip_media, root=root, input_roots=tuple(args.input_root),
                   anchor=anchor)
    if unanchored:
        report.chain[0].problems.insert(0, unanchored)
    if args.json:
        print(json.dumps({"ok": report.ok, "problems": report.problems, "root": report.root,
                          "anchor": report.anchor,
                          "chain": [{"path": n.path, **n.manifest} for n in report.chain]}, indent=1))
    else:
        print(format_chain(report))
    return 0 if report.ok else 1


def add_lineage_command(sub: Any) -> None:
    """Add the ``lineage`` command to the ``vlmrl`` sub-parsers."""
    lineage = sub.add_parser("lineage", help="print and verify a checkpoint's or report's chain back to its raw inputs")
    lineage.add_argument("target", help="checkpoint directory or asset key (e.g. rl_checkpoint)")
    lineage.add_argument("--artifacts", default="artifacts",
                         help="artifact root holding assets.json, or an object-store root (s3://bucket/prefix)")
    lineage.add_argument("--skip-media", action="store_true", help="do not re-hash media files")
    lineage.add_argument("--json", action="store_true", help="machine-readable output")
    lineage.add_argument("--input-root", action="append", default=[], metavar="DIR",
                         help="raw annotations/media kept outside the artifacts tree may lie here (repeatable)")
    anchor = lineage.add_mutually_exclusive_group()
    anchor.add_argument("--tracking-uri", help="check the head's hash against the MLflow run that recorded it "
                        "(use the original store, not one inside the audited copy)")
    anchor.add_argument("--expect-sha256", help="the head's hash (lineage.json or report.json) as recorded elsewhere")
    lineage.set_defaults(func=cmd_lineage)
