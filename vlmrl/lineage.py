"""Checkpoint lineage: the manifest written inside every checkpoint, and its audit.

Each checkpoint directory holds ``lineage.json``: what kind of checkpoint it is, its
parent checkpoint (reference and the SHA-256 of the parent's ``lineage.json``), the frame
datasets it was trained on (fingerprints, manifest hashes), the recipe and its hash, the
code version, the seed, final metrics, tracking ids (MLflow run, Dagster run) and the
SHA-256 of every file in the checkpoint.

References between artefacts (``ref``) are relative to the directory of the manifest
that holds them, so a copied artifacts tree refers to itself. The absolute ``path``
beside them is provenance only (where the artefact was built); the audit never follows
it except for manifests older than ``ref``, and then only inside the audited tree.

`audit` walks that chain from a checkpoint (or an evaluation report) back to the base
model and re-hashes everything: checkpoint files, dataset files, annotation files,
media and report files. Given a root, it refuses every reference that leaves that tree
(raw inputs kept elsewhere may be allowed explicitly as input roots). The files alone
cannot prove that nobody edited them and recomputed every hash, so the head's hash can
be checked against a record outside the tree: an `Anchor`, from Dagster's event log
(`orchestration.audit`) or from the MLflow run's ``vlmrl.content_sha256`` tag
(`mlflow_anchor`).
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
from vlmrl.hashing import relative_ref, sha256_file, sha256_json, sha256_tree

LINEAGE = "lineage.json"
FORMAT = "vlmrl.lineage/1"
ASSET_INDEX = "assets.json"  # written by the orchestration layer under the artifact root
# MLflow run tag holding the content hash of what the run materialized (lineage.json, report.json)
CONTENT_TAG = "vlmrl.content_sha256"


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
    from vlmrl.data.extract import MANIFEST, read_frame_manifest

    path = Path(path).resolve()
    manifest = read_frame_manifest(path)
    return {
        "role": role,
        "path": str(path),
        "fingerprint": manifest.fingerprint,
        "manifest_sha256": sha256_file(path / MANIFEST),
        "annotations": manifest.annotations,
        "media_root": manifest.media_root,
        "media_files": len(manifest.media),
        "kept": manifest.counts.kept,
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
        parent_entry = {"path": str(parent), "ref": relative_ref(parent, checkpoint_dir),
                        "kind": parent_manifest["kind"], "lineage_sha256": lineage_hash(parent)}
    return {
        "format": FORMAT,
        "kind": kind,
        "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "parent": parent_entry,
        # references relative to this checkpoint (staged beside its final place, so they hold there)
        "datasets": [{**d, "ref": relative_ref(d["path"], checkpoint_dir)} if "path" in d else d
                     for d in datasets or []],
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


@dataclass(frozen=True)
class Anchor:
    """The head's content hash as recorded outside the audited files, and by whom."""

    sha256: str
    source: str  # completes "differs from ...", e.g. "the one Dagster recorded for rl_checkpoint"


@dataclass(frozen=True)
class Scope:
    """Where an audit may look: the audited tree and, outside it, allowed raw-input locations.

    ``root`` None means unconfined (an in-place audit of a tree whose root is unknown).
    """

    root: Path | None = None
    inputs: tuple[Path, ...] = ()

    @classmethod
    def of(cls, root: str | os.PathLike[str] | None, inputs: tuple[str | os.PathLike[str], ...] = ()) -> Scope:
        return cls(Path(root).resolve() if root is not None else None, tuple(Path(p).resolve() for p in inputs))

    def contains(self, path: Path, *, allow: tuple[Path, ...] = ()) -> bool:
        if self.root is None:
            return True
        try:
            # resolved: a symlink in the tree that leads back to the original is outside
            real = Path(path).resolve()
        except (OSError, RuntimeError):  # a symlink loop cannot be inside anything
            return False
        return any(real.is_relative_to(base) for base in (self.root, *allow))


@dataclass
class AuditNode:
    """One checkpoint (or report) in the chain and what its audit found."""

    path: str
    manifest: dict[str, Any]
    problems: list[str] = field(default_factory=list)


@dataclass
class AuditReport:
    chain: list[AuditNode]
    root: str | None = None
    anchor: str | None = None  # who vouched for the head's hash, when someone did

    @property
    def problems(self) -> list[str]:
        return [p for node in self.chain for p in node.problems]

    @property
    def ok(self) -> bool:
        return not self.problems


def _join(base: Path, ref: str) -> Path:
    """``ref`` relative to ``base``, normalised but not resolved (messages show the user's names)."""
    return Path(os.path.normpath(os.path.join(os.path.abspath(base), ref)))


def _locate_output(scope: Scope, base: Path | None, entry: dict[str, Any], what: str) -> tuple[Path | None, list[str]]:
    """A dataset or checkpoint another manifest refers to; it must lie inside the audited tree."""
    ref, recorded = entry.get("ref"), entry.get("path")
    if ref is not None and base is not None:
        path = _join(base, ref)
        if scope.contains(path):
            return path, []
        return None, [f"{what} {ref!r} (recorded in {base}) resolves to {path.resolve()}, outside the audited "
                      f"tree {scope.root}: refused"]
    if recorded is None:
        return None, [f"{what}: the manifest in {base} records no path"]
    path = Path(recorded)
    if not scope.contains(path):
        return None, [f"{what} is recorded only as the absolute path {path} (a manifest written before references "
                      f"were relative), outside the audited tree {scope.root}: refused; rebuild it to audit copies"]
    return path, []


def _locate_input(scope: Scope, base: Path, ref: str | None, recorded: str | None,
                  what: str) -> tuple[Path | None, list[str]]:
    """An annotation file or media root: inside the tree, or under an allowed input root."""
    candidates = ([_join(base, ref)] if ref is not None else []) + ([Path(recorded)] if recorded else [])
    if not candidates:
        return None, [f"{what}: {base} records no path"]
    if scope.root is None:  # in place: the relative reference if it still resolves, else the recorded path
        return next((c for c in candidates if c.exists()), candidates[0]), []
    for allow in ((), scope.inputs):
        for c in candidates:
            if scope.contains(c, allow=allow):
                return c, []
    return None, [f"{what} {candidates[0]} (resolves to {candidates[0].resolve()}) lies outside the audited tree "
                  f"{scope.root}: refused (raw inputs kept elsewhere must be named as input roots, e.g. "
                  f"`vlmrl lineage --input-root DIR`)"]


def _escaping_links(directory: Path, scope: Scope, allow: tuple[Path, ...] = ()) -> list[str]:
    """Symbolic links in an artefact that lead out of the audited tree (e.g. back to the original)."""
    if scope.root is None:
        return []
    allow = (*scope.inputs, *allow)
    return [f"{p}: symbolic link to {os.readlink(p)}, outside the audited tree {scope.root}"
            for p in sorted(directory.rglob("*")) if p.is_symlink() and not scope.contains(p, allow=allow)]


def _verify_files(root: Path, recorded: dict[str, str], exclude: tuple[str, ...], what: str = "checkpoint") -> list[str]:
    problems = []
    current = sha256_tree(root, exclude=exclude)
    for rel, digest in recorded.items():
        if rel not in current:
            problems.append(f"{root / rel}: missing")
        elif current[rel] != digest:
            problems.append(f"{root / rel}: content changed since it was recorded")
    problems += [f"{root / rel}: not part of the recorded {what}" for rel in sorted(set(current) - set(recorded))]
    return problems


def verify_dataset(entry: dict[str, Any], check_media: bool = True, *, base: Path | None = None,
                   scope: Scope | None = None) -> list[str]:
    """Re-hash a recorded dataset: its files, manifest, annotation file and media.

    ``entry`` is what a checkpoint (or report) in ``base`` records about the dataset.
    """
    from vlmrl.data.extract import MANIFEST, read_frame_manifest, verify_frame_dataset

    scope = scope or Scope()
    path, problems = _locate_output(scope, base, entry, f"{entry.get('role', 'frame')} dataset")
    if path is None:
        return problems
    if not (path / MANIFEST).is_file():
        return [f"{path}: dataset missing (no {MANIFEST})"]
    if "manifest_sha256" in entry and sha256_file(path / MANIFEST) != entry["manifest_sha256"]:
        problems.append(f"{path / MANIFEST}: manifest changed since it was recorded by {base}")
    try:
        problems += verify_frame_dataset(path)
        manifest = read_frame_manifest(path)
        ann = manifest.annotations
    except (ValueError, KeyError, TypeError) as exc:  # unreadable manifest: name it, audit the rest
        return [*problems, f"{path / MANIFEST}: unreadable ({type(exc).__name__}: {exc})"]
    problems += _escaping_links(path, scope)
    ann_path, located = _locate_input(scope, path, ann.get("ref"), ann.get("file"), "annotation file")
    problems += located
    if ann_path is not None and not ann_path.is_file():
        problems.append(f"{ann_path}: annotation file missing")
    elif ann_path is not None and sha256_file(ann_path) != ann.get("sha256"):
        problems.append(f"{ann_path}: annotation file changed since the dataset was built")
    if check_media and manifest.media:
        root, located = _locate_input(scope, path, manifest.media_root_ref, manifest.get("media_root"),
                                      "media root")
        problems += located
        for rel, digest in (manifest.media if root is not None else {}).items():
            media = _join(root, rel)
            if not media.is_relative_to(_join(root, ".")):
                problems.append(f"{path / MANIFEST}: media path {rel!r} leaves the media root {root}: refused")
            elif not media.is_file():
                problems.append(f"{media}: media file missing")
            elif sha256_file(media) != digest:
                problems.append(f"{media}: media file changed since the dataset was built")
    return problems


def _head_mismatch(path: Path, actual: str, anchor: Anchor) -> str:
    return (f"{path}: differs from {anchor.source} (sha256 {actual[:16]}..., recorded "
            f"{str(anchor.sha256)[:16]}...)")


def _audit_chain(start: Path, scope: Scope, check_media: bool, anchor: Anchor | None) -> list[AuditNode]:
    chain: list[AuditNode] = []
    current: Path | None = _join(start, ".")
    seen: set[Path] = set()
    while current is not None:
        real = current.resolve()
        if real in seen:
            chain[-1].problems.append(f"{current}: lineage cycle")
            break
        seen.add(real)
        try:
            manifest = read_manifest(current)
        except (FileNotFoundError, ValueError) as exc:  # JSONDecodeError is a ValueError
            chain.append(AuditNode(str(current), {}, [str(exc)]))
            break
        node = AuditNode(str(current), manifest)
        if anchor is not None and (actual := lineage_hash(current)) != anchor.sha256:
            node.problems.append(_head_mismatch(current / LINEAGE, actual, anchor))
        node.problems += _verify_files(current, manifest.get("files", {}), (LINEAGE,))
        # a linked checkpoint's weights are symlinks to the model directory it names
        linked = (Path(manifest["linked_from"]).resolve(),) if manifest.get("linked_from") else ()
        node.problems += _escaping_links(current, scope, linked)
        for entry in manifest.get("datasets", []):
            node.problems += verify_dataset(entry, check_media, base=current, scope=scope)
        chain.append(node)
        parent = manifest.get("parent")
        if not parent:
            break
        current, located = _locate_output(scope, current, parent, "parent checkpoint")
        node.problems += located
        anchor = Anchor(parent.get("lineage_sha256", ""), "the one its child was trained from")
    return chain


def _audit_report(path: Path, scope: Scope, check_media: bool, anchor: Anchor | None) -> list[AuditNode]:
    """A report directory: its files, the benchmark data it scored, then its checkpoint's chain."""
    from vlmrl.eval.report import REPORT, read_report

    node = AuditNode(str(path), {"kind": "report"})
    try:
        report = read_report(path)
    except (FileNotFoundError, ValueError) as exc:
        node.problems.append(str(exc))
        return [node]
    bench, ckpt = report.benchmark, report.checkpoint
    node.manifest = {"kind": "report", "benchmark": bench.get("name"), "created_at": report.created_at,
                     "checkpoint": ckpt, "report_sha256": sha256_file(path / REPORT)}
    if anchor is not None and node.manifest["report_sha256"] != anchor.sha256:
        node.problems.append(_head_mismatch(path / REPORT, node.manifest["report_sha256"], anchor))
    if report.file_sha256 is None:
        node.problems.append(f"{path / REPORT}: records no file hashes (written before reports were audited): "
                             f"re-evaluate to make it verifiable")
    else:
        node.problems += _verify_files(path, report.file_sha256, (REPORT,), "report")
    node.problems += _escaping_links(path, scope)
    if "dataset_manifest_sha256" in bench:
        node.problems += verify_dataset({"role": "benchmark", "ref": bench.get("dataset_ref"),
                                         "path": bench.get("source"),
                                         "manifest_sha256": bench["dataset_manifest_sha256"]},
                                        check_media, base=path, scope=scope)
    elif bench.get("source_ref") is not None:
        source, located = _locate_input(scope, path, bench["source_ref"], bench.get("source"), "benchmark file")
        node.problems += located
        if source is not None and (not source.is_file() or sha256_file(source) != bench.get("sha256")):
            node.problems.append(f"{source}: benchmark file missing or changed since the report was written")
    chain = [node]
    if ckpt.get("lineage_sha256"):
        checkpoint, located = _locate_output(scope, path, ckpt, "evaluated checkpoint")
        node.problems += located
        if checkpoint is not None:
            chain += _audit_chain(checkpoint, scope, check_media,
                                  Anchor(ckpt["lineage_sha256"], "the one the report evaluated"))
    return chain


def is_report(path: str | os.PathLike[str]) -> bool:
    from vlmrl.eval.report import REPORT

    return (Path(path) / REPORT).is_file()


def head_sha256(target: str | os.PathLike[str]) -> str:
    """The content hash that identifies an artefact: its lineage.json or report.json hash."""
    from vlmrl.eval.report import REPORT

    return sha256_file(Path(target) / REPORT) if is_report(target) else lineage_hash(target)


def audit(target: str | os.PathLike[str], check_media: bool = True, *,
          root: str | os.PathLike[str] | None = None, input_roots: tuple[str | os.PathLike[str], ...] = (),
          anchor: Anchor | None = None) -> AuditReport:
    """Walk the chain from a checkpoint or report to its root, re-hashing everything recorded.

    ``root``: the artifacts tree being audited; references leaving it are refused (raw
    annotation files and media may also lie under ``input_roots``). ``anchor``: the
    head's hash as recorded outside the files (Dagster, MLflow), which catches an edit
    that recomputed every hash in the tree.
    """
    scope = Scope.of(root, tuple(input_roots))
    target = Path(target)
    chain = (_audit_report if is_report(target) else _audit_chain)(target, scope, check_media, anchor)
    if not scope.contains(target):
        chain[0].problems.insert(0, f"{target} lies outside the audited tree {scope.root}: refused")
    return AuditReport(chain, str(scope.root) if scope.root else None, anchor.source if anchor else None)


def mlflow_anchor(tracking_uri: str, run_id: str) -> Anchor:
    """The content hash an MLflow run recorded (its ``CONTENT_TAG``) for what it materialized.

    Raises LookupError when the store, the run or the tag is missing.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        raise LookupError(f"no MLflow store at {tracking_uri}")
    try:
        run = MlflowClient(tracking_uri=tracking_uri).get_run(run_id)
    except MlflowException as exc:
        raise LookupError(f"MLflow run {run_id} not found in {tracking_uri}: {exc.message}") from exc
    digest = run.data.tags.get(CONTENT_TAG)
    if not digest:
        raise LookupError(f"MLflow run {run_id} in {tracking_uri} has no {CONTENT_TAG} tag "
                          f"(recorded before runs carried it)")
    return Anchor(digest, f"the one MLflow run {run_id} recorded")


def format_chain(report: AuditReport) -> str:
    """A readable chain, newest first, with every problem under the node it concerns."""
    lines = []
    for depth, node in enumerate(report.chain):
        m = node.manifest
        pad = "  " * depth
        if m.get("kind") == "report":
            ckpt = m.get("checkpoint", {})
            lines.append(f"report {node.path}  benchmark {m.get('benchmark')}  sha256 "
                         f"{str(m.get('report_sha256'))[:12]}  evaluated {ckpt.get('kind')} checkpoint "
                         f"(lineage {str(ckpt.get('lineage_sha256'))[:12]})")
            lines += [f"   PROBLEM: {p}" for p in node.problems]
            continue
        lines.append(f"{pad}{'└─ ' if depth else ''}{m.get('kind', '?')} checkpoint {node.path}")
        if m:
            code = m.get("code", {})
            track = m.get("tracking", {})
            lines.append(f"{pad}   lineage {lineage_hash(node.path)[:12]}  recipe {m.get('recipe_sha256', '')[:12]}  "
                         f"seed {m.get('seed')}  code {code.get('vlmrl')} @ {str(code.get('git_commit'))[:10]}"
                         f"{' (dirty)' if code.get('git_dirty') else ''}")
            if track:
                lines.append(f"{pad}   tracking " + "  ".join(f"{k}={v}" for k, v in sorted(track.items())))
            for d in m.get("datasets", []):
                where = _join(Path(node.path), d["ref"]) if "ref" in d else d.get("path")
                lines.append(f"{pad}   {d.get('role')} data {where}  fingerprint {str(d.get('fingerprint'))[:12]}  "
                             f"{d.get('kept')} samples, {d.get('media_files')} media files")
                ann = d.get("annotations", {})
                ann_at = _join(Path(where), ann["ref"]) if "ref" in ann and where else ann.get("file")
                lines.append(f"{pad}     annotations {ann_at}  sha256 {str(ann.get('sha256'))[:12]}")
        lines += [f"{pad}   PROBLEM: {p}" for p in node.problems]
    scope = f" inside {report.root}" if report.root else ""
    if report.ok:
        lines.append(f"lineage OK: every recorded file re-hashed and matched{scope}"
                     + (f"; the head matches {report.anchor}" if report.anchor else
                        "; the head is not checked against an outside record (give one to catch an edit "
                        "that recomputed every hash)"))
    else:
        lines.append(f"lineage FAILED: {len(report.problems)} problem(s)")
    return "\n".join(lines)


def find_root(target: str | os.PathLike[str], artifacts: str | os.PathLike[str] | None = None) -> Path | None:
    """The artifacts tree ``target`` belongs to: ``artifacts`` if it holds the target, else the
    nearest ancestor with an asset index; None when neither (the audit is then unconfined)."""
    target = Path(target).resolve()
    if artifacts is not None and target.is_relative_to(Path(artifacts).resolve()):
        return Path(artifacts).resolve()
    return next((d for d in target.parents if (d / ASSET_INDEX).is_file()), None)


def record_asset(index: str | os.PathLike[str], key: str, entry: dict[str, Any]) -> None:
    """Remember where an orchestrated asset's latest materialization lives (by asset key).

    The orchestration layer calls this; `find_asset` reads it, so the library can audit
    an asset by name without importing the orchestrator. The path is stored relative to
    the index's directory (the artifacts root) so that a copied tree's index points into
    the copy.
    """
    path = Path(index)
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if "path" in entry:
        entry = {**entry, "path": relative_ref(entry["path"], path.parent)}
    data[key] = entry
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def find_asset(target: str, index: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """A checkpoint or report directory given as a path, or as an asset key in the asset index
    (with the index's entry for it: run ids, data version)."""
    path = Path(target)
    if path.exists():
        return path, {}
    index = Path(index)
    known = json.loads(index.read_text(encoding="utf-8")) if index.is_file() else {}
    if target in known:
        path = _join(index.parent, known[target]["path"])  # an absolute path (older index) stays as it is
        if not Scope.of(index.parent).contains(path):
            raise ValueError(f"{index}: {target!r} points to {path}, outside the artifacts tree {index.parent} "
                             f"(an index written before it recorded relative paths?): refused")
        return path, known[target]
    raise FileNotFoundError(
        f"{target!r} is neither a path nor an asset in {index} (known: {sorted(known) or 'none'})"
    )


def resolve_target(target: str, index: str | os.PathLike[str]) -> Path:
    """A checkpoint directory given as a path, or as an asset key found in the asset index."""
    return find_asset(target, index)[0]
