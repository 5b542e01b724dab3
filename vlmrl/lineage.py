"""Checkpoint lineage: the manifest written inside every checkpoint, and its audit.

Each checkpoint directory holds ``lineage.json``: what kind of checkpoint it is, its
parent checkpoint (path and the SHA-256 of the parent's ``lineage.json``), the frame
datasets it was trained on (fingerprints, annotation-file hashes, media root), the
recipe and its hash, the code version, the seed, final metrics, tracking ids (MLflow
run, Dagster run) and the SHA-256 of every file in the checkpoint.

`audit` walks that chain from any checkpoint back to the base model and re-hashes
everything on disk: checkpoint files, dataset files, annotation files and media. The
manifests on disk are authoritative for content (they hold every hash); Dagster's event
log is authoritative for *which* materialization consumed which (data versions are
the same fingerprints, so the two can be cross-checked).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmrl import __version__
from vlmrl.atomic import atomic_write_text
from vlmrl.hashing import sha256_file, sha256_json, sha256_tree

LINEAGE = "lineage.json"
FORMAT = "vlmrl.lineage/1"
ASSET_INDEX = "assets.json"  # written by the orchestration layer under the artifact root


def code_version() -> dict[str, Any]:
    """The package version and, when run from a git checkout, the commit and dirty flag."""
    info: dict[str, Any] = {"vlmrl": __version__, "git_commit": None, "git_dirty": None}
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "vlmrl"],
                                capture_output=True, text=True, timeout=10, check=True).stdout
        info["git_commit"], info["git_dirty"] = commit, bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def dataset_entry(path: str | os.PathLike[str], role: str) -> dict[str, Any]:
    """What a checkpoint records about one frame dataset it consumed."""
    from vlmrl.data.extract import MANIFEST, load_frame_dataset

    path = Path(path).resolve()
    _, manifest = load_frame_dataset(path, open_dataset=False)
    return {
        "role": role,
        "path": str(path),
        "fingerprint": manifest["fingerprint"],
        "manifest_sha256": sha256_file(path / MANIFEST),
        "annotations": manifest["annotations"],
        "media_root": manifest["media_root"],
        "media_files": len(manifest.get("media", {})),
        "kept": manifest["counts"]["kept"],
    }


def lineage_hash(checkpoint: str | os.PathLike[str]) -> str:
    """SHA-256 of a checkpoint's ``lineage.json``: the checkpoint's identity."""
    return sha256_file(Path(checkpoint) / LINEAGE)


def build_manifest(
    checkpoint_dir: str | os.PathLike[str],
    *,
    kind: str,
    parent: str | os.PathLike[str] | None = None,
    datasets: list[dict[str, Any]] | None = None,
    recipe: dict[str, Any] | None = None,
    seed: int | None = None,
    metrics: dict[str, Any] | None = None,
    tracking: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The lineage manifest for the files now in ``checkpoint_dir`` (not yet written)."""
    parent_entry = None
    if parent is not None:
        parent = Path(parent).resolve()
        if not (parent / LINEAGE).is_file():
            raise FileNotFoundError(f"parent checkpoint {parent} has no {LINEAGE}")
        parent_manifest = read_manifest(parent)
        parent_entry = {"path": str(parent), "kind": parent_manifest["kind"],
                        "lineage_sha256": lineage_hash(parent)}
    return {
        "format": FORMAT,
        "kind": kind,
        "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "parent": parent_entry,
        "datasets": datasets or [],
        "recipe": recipe or {},
        "recipe_sha256": sha256_json(recipe or {}),
        "code": code_version(),
        "seed": seed,
        "metrics": metrics or {},
        "tracking": tracking or {},
        **(extra or {}),
        "files": sha256_tree(checkpoint_dir, exclude=(LINEAGE,)),
    }


def write_manifest(checkpoint_dir: str | os.PathLike[str], **kwargs: Any) -> dict[str, Any]:
    """Build and write ``lineage.json`` (call it last, inside the staging directory)."""
    manifest = build_manifest(checkpoint_dir, **kwargs)
    Path(checkpoint_dir, LINEAGE).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def read_manifest(checkpoint: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(checkpoint) / LINEAGE
    if not path.is_file():
        raise FileNotFoundError(f"{checkpoint} has no {LINEAGE}: not a vlmrl checkpoint")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown lineage format {manifest.get('format')!r}")
    return manifest


@dataclass
class AuditNode:
    """One checkpoint in the chain and what its audit found."""

    path: str
    manifest: dict[str, Any]
    problems: list[str] = field(default_factory=list)


@dataclass
class AuditReport:
    chain: list[AuditNode]

    @property
    def problems(self) -> list[str]:
        return [p for node in self.chain for p in node.problems]

    @property
    def ok(self) -> bool:
        return not self.problems


def _verify_files(root: Path, recorded: dict[str, str], exclude: tuple[str, ...]) -> list[str]:
    problems = []
    current = sha256_tree(root, exclude=exclude)
    for rel, digest in recorded.items():
        if rel not in current:
            problems.append(f"{root / rel}: missing")
        elif current[rel] != digest:
            problems.append(f"{root / rel}: content changed since it was recorded")
    problems += [f"{root / rel}: not part of the recorded checkpoint" for rel in sorted(set(current) - set(recorded))]
    return problems


def verify_dataset(entry: dict[str, Any], check_media: bool = True) -> list[str]:
    """Re-hash a recorded dataset: its files, manifest, annotation file and media."""
    from vlmrl.data.extract import MANIFEST, verify_frame_dataset

    path = Path(entry["path"])
    if not (path / MANIFEST).is_file():
        return [f"{path}: dataset missing (no {MANIFEST})"]
    problems = []
    if sha256_file(path / MANIFEST) != entry["manifest_sha256"]:
        problems.append(f"{path / MANIFEST}: manifest changed since the checkpoint was trained")
    problems += verify_frame_dataset(path)
    manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    ann = Path(manifest["annotations"]["file"])
    if not ann.is_file():
        problems.append(f"{ann}: annotation file missing")
    elif sha256_file(ann) != manifest["annotations"]["sha256"]:
        problems.append(f"{ann}: annotation file changed since the dataset was built")
    if check_media:
        root = Path(manifest["media_root"])
        for rel, digest in manifest.get("media", {}).items():
            media = root / rel
            if not media.is_file():
                problems.append(f"{media}: media file missing")
            elif sha256_file(media) != digest:
                problems.append(f"{media}: media file changed since the dataset was built")
    return problems


def audit(checkpoint: str | os.PathLike[str], check_media: bool = True) -> AuditReport:
    """Walk the chain from ``checkpoint`` to its root, re-hashing everything recorded."""
    chain: list[AuditNode] = []
    current: Path | None = Path(checkpoint).resolve()
    expected_hash: str | None = None
    seen: set[str] = set()
    while current is not None:
        if str(current) in seen:
            chain[-1].problems.append(f"{current}: lineage cycle")
            break
        seen.add(str(current))
        try:
            manifest = read_manifest(current)
        except (FileNotFoundError, ValueError, json.JSONDecodeError) as exc:
            chain.append(AuditNode(str(current), {}, [str(exc)]))
            break
        node = AuditNode(str(current), manifest)
        if expected_hash is not None and lineage_hash(current) != expected_hash:
            node.problems.append(f"{current / LINEAGE}: differs from the one its child was trained from")
        node.problems += _verify_files(current, manifest.get("files", {}), (LINEAGE,))
        for entry in manifest.get("datasets", []):
            node.problems += verify_dataset(entry, check_media)
        chain.append(node)
        parent = manifest.get("parent")
        current = Path(parent["path"]) if parent else None
        expected_hash = parent["lineage_sha256"] if parent else None
    return AuditReport(chain)


def format_chain(report: AuditReport) -> str:
    """A readable chain, newest first, with every problem under the node it concerns."""
    lines = []
    for depth, node in enumerate(report.chain):
        m = node.manifest
        pad = "  " * depth
        head = f"{pad}{'└─ ' if depth else ''}{m.get('kind', '?')} checkpoint {node.path}"
        lines.append(head)
        if m:
            code = m.get("code", {})
            track = m.get("tracking", {})
            lines.append(f"{pad}   lineage {lineage_hash(node.path)[:12]}  recipe {m.get('recipe_sha256', '')[:12]}  "
                         f"seed {m.get('seed')}  code {code.get('vlmrl')} @ {str(code.get('git_commit'))[:10]}"
                         f"{' (dirty)' if code.get('git_dirty') else ''}")
            if track:
                lines.append(f"{pad}   tracking " + "  ".join(f"{k}={v}" for k, v in sorted(track.items())))
            for d in m.get("datasets", []):
                lines.append(f"{pad}   {d['role']} data {d['path']}  fingerprint {d['fingerprint'][:12]}  "
                             f"{d['kept']} samples, {d['media_files']} media files")
                lines.append(f"{pad}     annotations {d['annotations']['file']}  sha256 {d['annotations']['sha256'][:12]}")
        for p in node.problems:
            lines.append(f"{pad}   PROBLEM: {p}")
    lines.append("lineage OK: every recorded file re-hashed and matched" if report.ok
                 else f"lineage FAILED: {len(report.problems)} problem(s)")
    return "\n".join(lines)


def record_asset(index: str | os.PathLike[str], key: str, entry: dict[str, Any]) -> None:
    """Remember where an orchestrated asset's latest materialization lives (by asset key).

    The orchestration layer calls this; `resolve_target` reads it, so the library can audit
    an asset by name without importing the orchestrator.
    """
    path = Path(index)
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    data[key] = entry
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def resolve_target(target: str, index: str | os.PathLike[str]) -> Path:
    """A checkpoint directory given as a path, or as an asset key found in the asset index."""
    path = Path(target)
    if path.exists():
        return path
    index = Path(index)
    known = json.loads(index.read_text(encoding="utf-8")) if index.is_file() else {}
    if target in known:
        return Path(known[target]["path"])
    raise FileNotFoundError(
        f"{target!r} is neither a path nor an asset in {index} (known: {sorted(known) or 'none'})"
    )
