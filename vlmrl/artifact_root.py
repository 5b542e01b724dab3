"""The artifacts tree (raw/, frames/, checkpoints/, reports/, the asset index) on a local path
or on object storage.

A local root (a path or ``file://``) is the tree itself, exactly as before: nothing is copied,
`pull` and `push` only return the path. A remote root (``s3://bucket/prefix``, any fsspec URI)
is paired with a local cache directory holding the same layout: assets build into the cache
(`local`), `push` publishes a finished artifact (`vlmrl.storage.publish`), `pull` makes the
cache copy equal to the published one (`vlmrl.storage.fetch`). Because the layout is the same,
the relative references in lineage manifests hold in the cache as they do in the tree they
were written in, and `vlmrl.lineage.audit` runs on the cache unchanged.

The asset index of a remote root is one small JSON object per asset key
(``index/<url-quoted key>.json``): a single PUT is atomic on S3, so assets recording at the
same time never lose each other's entries, which a shared ``assets.json`` rewritten by
each of them would. A local root keeps ``assets.json`` (`vlmrl.lineage.record_asset`), which
``vlmrl lineage <asset key>`` reads.

Cache bookkeeping: ``<cache>/.vlmrl-pulled/<quoted artifact path>.json`` names the files of
each artifact pulled (or pushed) into the cache. It is what lets a later `pull` replace a
stale copy: a directory it does not describe, or one holding a file it does not name, is
never deleted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import fsspec

from vlmrl import storage
from vlmrl.atomic import HOST_TAG, atomic_write_text
from vlmrl.hashing import sha256_tree
from vlmrl.lineage import ASSET_INDEX, LINEAGE, Anchor, audit, record_asset

log = logging.getLogger(__name__)

INDEX = "index"  # prefix of the per-key index objects under a remote root
PULLED = ".vlmrl-pulled"  # cache bookkeeping (see the module docstring)
_LOCAL_PROTOCOLS = (None, "file", "local")


def _without_userinfo(uri: str) -> str:
    """``uri`` with any ``user:secret@`` removed: what may be shown, stored or used as a name."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@", r"\1", uri)


def default_cache(uri: str) -> Path:
    """``$VLMRL_CACHE``, else ``~/.cache/vlmrl/artifacts/<protocol>/<bucket>/<prefix>``.

    Path segments are reduced to ``[A-Za-z0-9._-]``; when that changed anything a short hash of
    the URI is appended, so two URIs never share a cache by accident of spelling.
    """
    if os.environ.get("VLMRL_CACHE"):
        return Path(os.environ["VLMRL_CACHE"]).expanduser()
    clean = _without_userinfo(uri).rstrip("/")
    protocol, path = fsspec.core.split_protocol(clean)
    segments = [protocol or "file", *(s for s in path.split("/") if s)]
    safe = [re.sub(r"[^A-Za-z0-9._-]", "_", s) for s in segments]
    safe = ["_" if s in (".", "..") else s for s in safe]
    if safe != segments:
        safe[-1] += "-" + hashlib.sha256(clean.encode()).hexdigest()[:8]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base.joinpath("vlmrl", "artifacts", *safe)


class ArtifactRoot:
    """The artifacts tree at ``root``: a local directory, or a remote URI with a local cache.

    ``cache`` (remote roots only): the local copy of the tree; default `default_cache`.
    ``storage_options``: passed to fsspec (endpoint, credentials); they never appear in a
    message, and neither does user information in ``root``.
    """

    def __init__(self, root: str | os.PathLike[str], cache: str | os.PathLike[str] | None = None,
                 storage_options: dict[str, Any] | None = None) -> None:
        root = os.fspath(root)
        protocol, path = fsspec.core.split_protocol(root)
        self.remote = protocol not in _LOCAL_PROTOCOLS
        self.storage_options = dict(storage_options or {})
        if self.remote:
            self._root_uri = root.rstrip("/")  # with credentials, if the URI carries any
            self.root = _without_userinfo(self._root_uri)
            self._fs, self._fs_root = fsspec.core.url_to_fs(self._root_uri, **self.storage_options)
            self._fs_root = self._fs_root.rstrip("/")
            if not self._fs_root:
                raise ValueError(f"{self.root}: no bucket or directory to hold the artifacts")
            self.cache: Path | None = Path(cache).expanduser() if cache is not None else default_cache(root)
            self.local_root = self.cache
        else:
            # as ArtifactStore: the path as given (relative to the working directory if relative)
            self.root = path if protocol else root
            self.cache = None
            self.local_root = Path(self.root)

    def __repr__(self) -> str:
        cache = f", cache={str(self.cache)!r}" if self.remote else ""
        return f"ArtifactRoot({self.root!r}{cache})"

    # --- paths ---------------------------------------------------------------------------

    @staticmethod
    def _rel(parts: Iterable[str | os.PathLike[str]], *, required: bool = False) -> str:
        """The POSIX path inside the tree that ``parts`` name ("" for the root itself)."""
        pieces = [p for part in parts for p in os.fspath(part).split("/")]
        if any(p in ("", ".", "..") or "\\" in p or "\x00" in p for p in pieces):
            raise ValueError(f"{'/'.join(map(os.fspath, parts))!r}: not a path inside the artifacts tree")
        if pieces and pieces[0] == PULLED:
            raise ValueError(f"{PULLED} is reserved for the cache's bookkeeping")
        if required and not pieces:
            raise ValueError("name an artifact (e.g. 'checkpoints', 'sft'), not the whole tree")
        return "/".join(pieces)

    def _path(self, rel: str) -> Path:
        return self.local_root.joinpath(*rel.split("/")) if rel else self.local_root

    def _full(self, rel: str) -> str:
        """The URI storage is called with (credentials included when the root carries them)."""
        return f"{self._root_uri}/{rel}" if rel else self._root_uri

    def local(self, *parts: str | os.PathLike[str]) -> Path:
        """The working path of ``parts`` (in the tree, or in the cache of a remote root); its
        parent directory is created."""
        path = self._path(self._rel(parts))
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def uri(self, *parts: str | os.PathLike[str]) -> str:
        """Where ``parts`` live: the remote URI (no user information) or the local path."""
        rel = self._rel(parts)
        if self.remote:
            return f"{self.root}/{rel}" if rel else self.root
        return str(self._path(rel))

    # --- pull / push ---------------------------------------------------------------------

    def _pulled_record(self, rel: str) -> Path:
        return self.local_root / PULLED / f"{quote(rel, safe='')}.json"

    def _remember(self, rel: str, local: Path, upload_id: str | None) -> None:
        """Note that ``local`` is this project's copy of the published ``rel`` (names only:
        what a later pull may replace)."""
        record = self._pulled_record(rel)
        record.parent.mkdir(parents=True, exist_ok=True)
        names = sorted(p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file())
        atomic_write_text(record, json.dumps({"uri": self.uri(rel), "upload_id": upload_id,
                                              "files": names}, indent=1) + "\n")

    def _replaceable(self, rel: str, local: Path) -> bool:
        """Whether ``local`` is a copy this project pulled or pushed, holding nothing else."""
        try:
            record = json.loads(self._pulled_record(rel).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        if not isinstance(record, dict) or record.get("uri") != self.uri(rel):
            return False
        present = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file() or p.is_symlink()}
        return local.is_dir() and not local.is_symlink() and present <= set(record.get("files") or ())

    def pull(self, *parts: str | os.PathLike[str]) -> Path:
        """Make the local copy of an artifact equal to the published one; return its path.

        Remote: nothing is downloaded when the copy already holds exactly the published files
        (re-hashed against the marker); a stale copy this project pulled or pushed is replaced
        (the old one stays in place until the new one is complete and verified); any other
        non-empty directory there is refused (FileExistsError). NotPublishedError when the
        artifact is missing or its upload never finished. Local: the path, or
        FileNotFoundError.
        """
        rel = self._rel(parts, required=True)
        local = self._path(rel)
        if not self.remote:
            if not local.exists():
                raise FileNotFoundError(f"{local}: no such artifact in the artifacts tree {self.root}")
            return local
        uri = self._full(rel)
        marker = storage.read_marker(uri, storage_options=self.storage_options)
        if local.is_dir() and not local.is_symlink() and sha256_tree(local) == {
                name: entry["sha256"] for name, entry in marker["files"].items()}:
            log.info("%s: the cache already holds %s", local, self.uri(rel))
            self._remember(rel, local, marker["upload_id"])
            return local
        local.parent.mkdir(parents=True, exist_ok=True)
        if not (local.exists() or local.is_symlink()) or (local.is_dir() and not any(local.iterdir())):
            storage.fetch(uri, local, storage_options=self.storage_options)
        elif self._replaceable(rel, local):
            self._replace(uri, local)
        else:
            raise FileExistsError(
                f"{local} holds something other than the published {self.uri(rel)} and is not a copy "
                f"vlmrl pulled there: not replaced (move it away, or use another cache)")
        self._remember(rel, local, marker["upload_id"])
        return local

    def _replace(self, uri: str, local: Path) -> None:
        """Fetch next to ``local``, then swap. The names follow `vlmrl.atomic`'s staging / trash
        convention (owner pid and host) so that a killed pull is cleaned up, and a copy caught
        between the two renames is put back, by the next atomic write of ``local``."""
        owner = f"p{os.getpid()}-h{HOST_TAG}-"
        fresh = Path(tempfile.mkdtemp(prefix=f".{local.name}.staging-{owner}pull-", dir=local.parent))
        try:
            storage.fetch(uri, fresh, storage_options=self.storage_options)
            trash = Path(tempfile.mkdtemp(prefix=f".{local.name}.old-{owner}", dir=local.parent))
            os.replace(local, trash / local.name)
            os.replace(fresh, local)
            shutil.rmtree(trash, ignore_errors=True)
        finally:
            shutil.rmtree(fresh, ignore_errors=True)
        log.info("replaced the stale copy %s with %s", local, storage.display(uri))

    def push(self, *parts: str | os.PathLike[str], overwrite: bool = True) -> str:
        """Publish the finished local artifact (remote root) and return where it lives."""
        rel = self._rel(parts, required=True)
        local = self._path(rel)
        if not self.remote:
            if not local.exists():
                raise FileNotFoundError(f"{local}: no such artifact in the artifacts tree {self.root}")
            return str(local)
        marker = storage.publish(local, self._full(rel), overwrite, storage_options=self.storage_options)
        self._remember(rel, local, marker["upload_id"])  # the local dir is now a published copy
        return self.uri(rel)

    # --- asset index ---------------------------------------------------------------------

    def _index_object(self, key: str) -> str:
        if not isinstance(key, str) or not key:
            raise ValueError(f"asset key {key!r}: a non-empty string is needed")
        return f"{self._fs_root}/{INDEX}/{quote(key, safe='')}.json"

    def _tree_rel(self, path: str | os.PathLike[str]) -> str:
        """An artifact's path relative to the root: from a path under the local tree (or the
        cache), or one already relative to the root."""
        path = Path(path)
        if not path.is_absolute():
            return self._rel([path.as_posix()], required=True)
        base = os.path.realpath(self.local_root)
        real = os.path.realpath(path)
        if os.path.commonpath([base, real]) != base or real == base:
            raise ValueError(f"{path} is not an artifact inside {self.local_root}")
        return self._rel([Path(os.path.relpath(real, base)).as_posix()], required=True)

    def record(self, key: str, entry: dict[str, Any]) -> dict[str, Any]:
        """Remember where asset ``key``'s latest materialization lives; return the entry as
        `lookup` will give it.

        ``entry["path"]``: the artifact, under the local tree / cache or relative to the root;
        it is stored relative to the root (beside ``uri`` on a remote root). Other fields (run
        ids, data version) are kept as given.
        """
        if "path" not in entry:
            raise ValueError(f"index entry for {key!r} has no 'path'")
        rel = self._tree_rel(entry["path"])
        stored = {**entry, "path": rel, "uri": self.uri(rel)}
        if not self.remote:  # assets.json exactly as before (no absolute uri in a copyable tree)
            record_asset(self.local_root / ASSET_INDEX, key, {**entry, "path": str(self._path(rel).resolve())})
        else:  # one object per key: a single PUT, atomic, no read-modify-write of a shared file
            self._fs.pipe_file(self._index_object(key), json.dumps(stored, indent=1, sort_keys=True).encode())
        return stored

    def lookup(self, key: str) -> dict[str, Any] | None:
        """The index entry of asset ``key`` (``uri`` as it is under this root), or None."""
        if not self.remote:
            index = self.local_root / ASSET_INDEX
            entry = json.loads(index.read_text(encoding="utf-8")).get(key) if index.is_file() else None
        else:
            entry, problem = None, None
            try:
                entry = json.loads(self._fs.cat_file(self._index_object(key)).decode("utf-8"))
            except FileNotFoundError:
                return None
            except (UnicodeDecodeError, ValueError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if problem or not isinstance(entry, dict):
                raise ValueError(f"{self.root}/{INDEX}: the entry of {key!r} is unreadable "
                                 f"({problem or type(entry).__name__})")
        if isinstance(entry, dict) and isinstance(entry.get("path"), str) and not os.path.isabs(entry["path"]):
            entry = {**entry, "uri": self.uri(entry["path"])}
        return entry

    def keys(self) -> list[str]:
        """Every asset key in the index, sorted."""
        if not self.remote:
            index = self.local_root / ASSET_INDEX
            return sorted(json.loads(index.read_text(encoding="utf-8"))) if index.is_file() else []
        prefix = f"{self._fs_root}/{INDEX}"
        self._fs.invalidate_cache(prefix)
        try:
            found = self._fs.find(prefix)
        except FileNotFoundError:
            return []
        names = (posixpath.basename(p.rstrip("/")) for p in found)
        return sorted(unquote(n[: -len(".json")]) for n in names if n.endswith(".json"))

    # --- audit ---------------------------------------------------------------------------

    def audit(self, *parts: str | os.PathLike[str], check_media: bool = True,
              input_roots: tuple[str | os.PathLike[str], ...] = (), anchor: Anchor | None = None) -> list[str]:
        """Problems found in a checkpoint's or report's chain (empty: everything re-hashed and
        matched).

        Local: `vlmrl.lineage.audit` of the tree, confined to it. Remote: every artifact of
        the chain (the target, parent checkpoints, frame datasets, the raw inputs they name,
        evaluated checkpoints) is re-hashed where it is stored (`vlmrl.storage.audit_published`)
        and pulled into the cache, then the cache copy of the target is audited, confined to
        the cache. ``input_roots``, ``anchor``: as `vlmrl.lineage.audit`.
        """
        rel = self._rel(parts, required=True)
        if not self.remote:
            return audit(self._path(rel), check_media, root=self.local_root, input_roots=input_roots,
                         anchor=anchor).problems
        problems: list[str] = []
        pulled: dict[str, bool] = {}
        holders: dict[str, str | None] = {}
        pending = [rel]
        while pending:
            art = pending.pop()
            if art in pulled:
                continue
            stored = storage.audit_published(self._full(art), storage_options=self.storage_options)
            problems += stored
            pulled[art] = False
            if not storage.is_published(self._full(art), storage_options=self.storage_options):
                continue  # audit_published said why
            try:
                local = self.pull(art)
            except storage.ArtifactIntegrityError as exc:
                if not stored:  # changed between the two reads: say so
                    problems.append(f"{self.uri(art)}: not pulled: {exc}")
                continue
            except (FileNotFoundError, FileExistsError) as exc:  # NotPublishedError included
                problems.append(f"{self.uri(art)}: not pulled: {exc}")
                continue
            pulled[art] = True
            for ref in self._references(local, art):
                if ref not in holders:
                    holders[ref] = self._holder(ref)
                if holders[ref] is None:
                    problems.append(f"{self.uri(ref)}: referenced from {self.uri(art)}, but no published "
                                    f"artifact under {self.root} holds it")
                else:
                    pending.append(holders[ref])
        if not pulled[rel]:
            return problems
        return problems + audit(self._path(rel), check_media, root=self.local_root, input_roots=input_roots,
                                anchor=anchor).problems

    def _references(self, local: Path, rel: str) -> list[str]:
        """The paths inside the tree (relative to the root) that an artifact's manifests refer
        to. References leaving the tree are not followed (the lineage audit refuses them)."""
        from vlmrl.data.extract import MANIFEST
        from vlmrl.eval.report import REPORT

        def read(name: str) -> dict[str, Any]:
            try:
                data = json.loads((local / name).read_text(encoding="utf-8"))
            except (OSError, ValueError):  # missing or unreadable: the lineage audit says so
                return {}
            return data if isinstance(data, dict) else {}

        def field(value: Any, key: str) -> Any:
            return value.get(key) if isinstance(value, dict) else None

        lineage, report, manifest = read(LINEAGE), read(REPORT), read(MANIFEST)
        refs = [field(lineage.get("parent"), "ref"),
                *(field(d, "ref") for d in lineage.get("datasets") or [] if isinstance(d, dict)),
                field(report.get("checkpoint"), "ref"), field(report.get("benchmark"), "dataset_ref"),
                field(report.get("benchmark"), "source_ref"),
                field(manifest.get("annotations"), "ref"), manifest.get("media_root_ref")]
        out = []
        for ref in refs:
            if not isinstance(ref, str) or not ref or ref.startswith("/"):
                continue
            joined = posixpath.normpath(posixpath.join(rel, ref))
            if joined not in (".", "..") and not joined.startswith("../"):
                out.append(joined)
        return out

    def _holder(self, rel: str) -> str | None:
        """The published artifact holding ``rel`` (itself or the nearest prefix with a marker)."""
        pieces = rel.split("/")
        for n in range(1, len(pieces) + 1):
            prefix = "/".join(pieces[:n])
            marker = f"{self._fs_root}/{prefix}/{storage.MARKER}"
            self._fs.invalidate_cache(posixpath.dirname(marker))
            if self._fs.exists(marker):
                return prefix
        return None
