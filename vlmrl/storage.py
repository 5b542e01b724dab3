"""Artifact directories on object storage, or any fsspec location: publish, fetch, audit.

A finished local directory (a frame dataset, a checkpoint, a report) is published under a
prefix (``s3://bucket/prefix/...``, or a local path: the embedded default and the tests
share the code). S3 has no rename, so completeness is a file, not a directory name:

1. ``_vlmrl_upload.json`` is written first. It names the upload (id, host, pid, start time)
   and every file it will write: the signature by which the leftovers of an interrupted
   upload are recognised as this project's and replaced by the next `publish`.
2. The files are uploaded.
3. ``_vlmrl_published.json``, the marker, is written last. It lists every file with its
   size and SHA-256. A prefix is complete only when the marker is there and valid.

`fetch` downloads into a staging directory (`vlmrl.atomic.atomic_directory`), verifies
every file against the marker, then renames it into place; `read_text` reads one file
(lineage.json, report.json) verified against the marker without downloading the rest;
`audit_published` re-hashes what is stored, streamed. A fetched directory holds exactly the
published files (no marker), so `vlmrl.lineage.audit` and the frame datasets' own checks
apply to it unchanged.

What publish may replace (the rule of `vlmrl.atomic.check_output`, for prefixes): nothing
under a prefix that holds any object neither the marker nor the upload record names
(FileExistsError: the project never deletes or overwrites what it did not write); a
complete artifact only with ``overwrite=True``, and then the old marker is deleted first;
an interrupted upload's leftovers always, unless its record says a live process on this
host is still writing them. Writers on different hosts publishing to one prefix at the same
time are not detected: give each prefix one writer (one asset, one partition).

Credentials come from the environment and fsspec's configuration (``AWS_ACCESS_KEY_ID``,
``AWS_ENDPOINT_URL``, ``FSSPEC_S3_*``...), or ``storage_options``; they never appear in a
message or in the log (user information in a URI is masked).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import re
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec

from vlmrl.atomic import HOST_TAG, OutputKind, atomic_directory
from vlmrl.hashing import sha256_file, sha256_tree

log = logging.getLogger(__name__)

MARKER = "_vlmrl_published.json"
UPLOAD = "_vlmrl_upload.json"
RESERVED = (MARKER, UPLOAD)
FORMAT = "vlmrl.published/1"
UPLOAD_FORMAT = "vlmrl.upload/1"
LINEAGE = "lineage.json"  # vlmrl.lineage.LINEAGE (layer 2: not importable from here)
_CHUNK = 1 << 20
_SHOWN = 5  # problems / names quoted in one message
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

# A fetched directory carries no marker (it holds exactly the published files), so by
# default nothing recognises it as replaceable: pass the artefact's own kind (a checkpoint's,
# a frame dataset's) to `fetch` to allow overwrite=True.
FETCHED = OutputKind("fetched artifact", MARKER, values=(("format", FORMAT),))


class NotPublishedError(FileNotFoundError):
    """The prefix holds no valid marker: nothing, or an upload that never finished."""


class ArtifactIntegrityError(ValueError):
    """A published file differs from what the marker records (size or SHA-256)."""


def display(uri: str) -> str:
    """``uri`` as it may appear in messages and logs: user information (``user:secret@``) masked."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@", r"\1***@", str(uri))


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _open_fs(uri: str | os.PathLike[str], storage_options: dict[str, Any] | None):
    fs, root = fsspec.core.url_to_fs(os.fspath(uri), **(storage_options or {}))
    root = root.rstrip("/")
    if not root:
        raise ValueError(f"{display(os.fspath(uri))}: no bucket or directory to publish under")
    return fs, root


def _is_local(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple | list) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def _write_bytes(fs, path: str, data: bytes) -> None:
    if _is_local(fs):
        fs.makedirs(fs._parent(path), exist_ok=True)
    fs.pipe_file(path, data)


def _safe_rel(rel: object) -> bool:
    """A relative POSIX path inside the prefix (a marker from elsewhere may name anything)."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\x00" in rel or rel.startswith("/"):
        return False
    return all(part not in ("", ".", "..") for part in rel.split("/")) and rel not in RESERVED


def _listing(fs, root: str) -> dict[str, int]:
    """Every object under the prefix: relative path -> size (fresh, not from a cache)."""
    fs.invalidate_cache(root)
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError as exc:  # e.g. no such bucket
        raise FileNotFoundError(f"{display(fs.unstrip_protocol(root))}: cannot list ({exc})") from None
    objects = {}
    for path, info in found.items():
        path = path.rstrip("/")
        if path == root:
            raise FileExistsError(f"{root} is a single object, not a prefix of files")
        if info.get("type", "file") != "file":
            continue
        objects[path[len(root) + 1:]] = int(info.get("size") or 0)
    return objects


def _load_json(fs, path: str) -> tuple[Any, str | None]:
    """(value, None), or (None, why it could not be read)."""
    try:
        return json.loads(fs.cat_file(path).decode("utf-8")), None
    except FileNotFoundError:
        return None, "missing"
    except (UnicodeDecodeError, ValueError) as exc:
        return None, f"unreadable ({type(exc).__name__}: {exc})"


def _marker_problem(marker: Any) -> str | None:
    if not isinstance(marker, dict) or marker.get("format") != FORMAT:
        found = marker.get("format") if isinstance(marker, dict) else type(marker).__name__
        return f"unknown format {found!r}"
    files = marker.get("files")
    if not isinstance(files, dict) or not isinstance(marker.get("upload_id"), str):
        return "no file list or upload id"
    for rel, entry in files.items():
        if not _safe_rel(rel):
            return f"unsafe file name {rel!r}"
        if not (isinstance(entry, dict) and isinstance(entry.get("size"), int) and entry["size"] >= 0
                and isinstance(entry.get("sha256"), str) and _HEX64.match(entry["sha256"])):
            return f"bad entry for {rel!r}"
    return None


def _upload_files(record: Any) -> list[str]:
    """The files an upload record names (none when it is not a valid record of ours)."""
    if not isinstance(record, dict) or record.get("format") != UPLOAD_FORMAT:
        return []
    files = record.get("files")
    return [f for f in files if _safe_rel(f)] if isinstance(files, list) else []


@dataclass
class _State:
    """What a prefix holds, and which of it this project wrote."""

    objects: dict[str, int]
    marker: dict[str, Any] | None  # valid markers only
    marker_problem: str | None  # why there is no valid marker ("missing", "unknown format ...")
    upload: dict[str, Any] | None  # a valid upload record
    ours: set[str] = field(default_factory=set)

    @property
    def foreign(self) -> list[str]:
        return sorted(set(self.objects) - self.ours)


def _inspect(fs, root: str) -> _State:
    objects = _listing(fs, root)
    marker, problem = (None, "missing") if MARKER not in objects else _load_json(fs, f"{root}/{MARKER}")
    problem = problem or _marker_problem(marker)
    record, _ = (None, "missing") if UPLOAD not in objects else _load_json(fs, f"{root}/{UPLOAD}")
    upload_files = _upload_files(record)
    state = _State(objects, None if problem else marker, problem,
                   record if isinstance(record, dict) and record.get("format") == UPLOAD_FORMAT else None)
    state.ours = {name for name in RESERVED if name in objects and (name != UPLOAD or state.upload)}
    if state.marker is not None:
        state.ours |= set(state.marker["files"])
    state.ours |= set(upload_files)
    if MARKER in objects and state.marker is None and state.upload is None:
        state.ours.discard(MARKER)  # a marker we cannot read, beside nothing of ours: not ours
    return state


def _unfinished(uri: str, state: _State) -> str:
    """What is missing, for a prefix without a valid marker."""
    where = display(uri)
    if state.marker_problem != "missing":
        return f"{where}: {MARKER} is {state.marker_problem}: not a complete vlmrl artifact"
    if state.upload is not None:
        names = _upload_files(state.upload)
        present = sum(1 for n in names if n in state.objects)
        return (f"{where}: incomplete: no {MARKER}; upload {state.upload.get('upload_id')} started "
                f"{state.upload.get('started_at')} never finished ({present} of {len(names)} files "
                f"present): publish it again")
    if not state.objects:
        return f"{where}: nothing is published there (no {MARKER})"
    return f"{where}: not a vlmrl artifact: {len(state.objects)} object(s) but no {MARKER}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return isinstance(pid, int) and pid > 0
    return True


def _local_files(local: Path) -> list[tuple[str, Path]]:
    """(relative POSIX path, path) of every file to publish; symlinked files are followed."""
    if not local.is_dir():
        raise NotADirectoryError(f"{local}: not a directory to publish")
    files = []
    for dirpath, dirnames, filenames in os.walk(local):
        base = Path(dirpath)
        for name in dirnames:
            if (base / name).is_symlink():
                raise ValueError(f"{base / name}: a symbolic link to a directory cannot be published "
                                 f"faithfully (copy its files into the artifact)")
        for name in filenames:
            path = base / name
            if not path.is_file():
                raise FileNotFoundError(f"{path}: not a regular file (a dangling link?)")
            files.append((path.relative_to(local).as_posix(), path))
    clash = [rel for rel, _ in files if rel in RESERVED]
    if clash:
        raise ValueError(f"{local}: holds {clash}, names reserved for the publishing records")
    return sorted(files)


def _stat(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def publish(local_dir: str | os.PathLike[str], uri: str | os.PathLike[str], overwrite: bool = False, *,
            storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Upload the finished directory ``local_dir`` under ``uri``; return the marker written.

    Refused (FileExistsError): a prefix holding anything this project did not write; a
    complete artifact, unless ``overwrite``; an unfinished upload a live process on this host
    is still writing. The leftovers of an interrupted upload are replaced. Empty
    directories are not kept (object stores have none).
    """
    uri = os.fspath(uri)
    where = display(uri)
    local = Path(local_dir)
    files = _local_files(local)
    entries, stats = {}, {}
    for rel, path in files:
        stats[rel] = _stat(path)
        entries[rel] = {"size": stats[rel][0], "sha256": sha256_file(path)}

    fs, root = _open_fs(uri, storage_options)
    if _is_local(fs):
        source, target = local.resolve(), Path(root).resolve()
        if source.is_relative_to(target) or target.is_relative_to(source):
            raise ValueError(f"refusing to publish {local} to {where}: one contains the other")
    state = _inspect(fs, root)
    foreign = state.foreign
    if foreign:
        raise FileExistsError(
            f"refusing to publish to {where}: it holds {len(foreign)} object(s) vlmrl did not write "
            f"(e.g. {foreign[:_SHOWN]}); choose another prefix")
    if state.marker is not None and not overwrite:
        raise FileExistsError(
            f"{where} already holds a published artifact (upload {state.marker['upload_id']} of "
            f"{state.marker.get('created_at')}); pass overwrite=True to replace it")
    if state.marker is None and state.upload is not None:
        pid, host = state.upload.get("pid"), state.upload.get("host_tag")
        if host == HOST_TAG and isinstance(pid, int) and pid != os.getpid() and _pid_alive(pid):
            raise FileExistsError(f"{where}: upload {state.upload.get('upload_id')} by process {pid} "
                                  f"on this host is still running; wait for it or stop it")
        log.warning("replacing the leftovers of unfinished upload %s under %s",
                    state.upload.get("upload_id"), where)

    if MARKER in state.ours:  # first: from here on the prefix is not complete
        fs.rm_file(f"{root}/{MARKER}")
    upload_id = uuid.uuid4().hex
    previous = sorted((state.ours - set(RESERVED)) & set(state.objects))
    record = {"format": UPLOAD_FORMAT, "upload_id": upload_id, "started_at": _now(),
              "host": socket.gethostname(), "host_tag": HOST_TAG, "pid": os.getpid(),
              "files": sorted(set(entries) | set(previous))}
    _write_bytes(fs, f"{root}/{UPLOAD}", json.dumps(record, indent=1).encode())
    stale = [rel for rel in previous if rel not in entries]
    if stale:
        fs.rm([f"{root}/{rel}" for rel in stale])
        record["files"] = sorted(entries)
        _write_bytes(fs, f"{root}/{UPLOAD}", json.dumps(record, indent=1).encode())

    remote = [f"{root}/{rel}" for rel, _ in files]
    if _is_local(fs):
        for path in {fs._parent(r) for r in remote}:
            fs.makedirs(path, exist_ok=True)
    if files:
        fs.put([str(p) for _, p in files], remote)
    changed = [rel for rel, path in files if _stat(path) != stats[rel]]
    if changed:
        raise RuntimeError(f"{local}: {changed[:_SHOWN]} changed while being published to {where}; "
                           f"the upload is left unfinished (publish a finished directory)")
    stored = _listing(fs, root)
    short = [rel for rel, e in entries.items() if stored.get(rel) != e["size"]]
    if short:
        raise OSError(f"{where}: {short[:_SHOWN]} not stored with the uploaded size; "
                      f"the upload is left unfinished")
    marker = {"format": FORMAT, "upload_id": upload_id, "created_at": _now(),
              "file_count": len(entries), "total_bytes": sum(e["size"] for e in entries.values()),
              "files": entries}
    _write_bytes(fs, f"{root}/{MARKER}", json.dumps(marker, indent=1, sort_keys=True).encode())
    log.info("published %s (%d files, %d bytes) to %s", local, len(entries), marker["total_bytes"], where)
    return marker


def _require_marker(fs, root: str, uri: str) -> dict[str, Any]:
    marker, problem = _load_json(fs, f"{root}/{MARKER}")
    problem = problem or _marker_problem(marker)
    if problem:
        raise NotPublishedError(_unfinished(uri, _inspect(fs, root)))
    return marker


def read_marker(uri: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The marker of a complete artifact (its files' sizes and SHA-256), or NotPublishedError.

    ``read_marker(uri)["files"]["lineage.json"]["sha256"]`` is the checkpoint's identity
    (`vlmrl.lineage.lineage_hash`) without reading anything else.
    """
    fs, root = _open_fs(uri, storage_options)
    fs.invalidate_cache(root)
    return _require_marker(fs, root, os.fspath(uri))


def is_published(uri: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None) -> bool:
    """Whether ``uri`` holds a valid marker (a complete upload). The content is not re-hashed:
    `audit_published` does that."""
    try:
        read_marker(uri, storage_options=storage_options)
    except (FileNotFoundError, FileExistsError):
        return False
    return True


def _hash_stream(fh) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    while chunk := fh.read(_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def _mismatch(where: str, entry: dict[str, Any], size: int, digest: str) -> str | None:
    if size != entry["size"]:
        return f"{where}: {size} bytes, the marker records {entry['size']}"
    if digest != entry["sha256"]:
        return f"{where}: content differs from the marker (sha256 {digest[:16]}..., recorded {entry['sha256'][:16]}...)"
    return None


def _holds_exactly(local: Path, files: dict[str, dict[str, Any]]) -> bool:
    if not local.is_dir():
        return False
    return sha256_tree(local) == {rel: e["sha256"] for rel, e in files.items()}


def fetch(uri: str | os.PathLike[str], local_dir: str | os.PathLike[str], overwrite: bool = False, *,
          kind: OutputKind | None = None, storage_options: dict[str, Any] | None = None) -> Path:
    """Download the artifact at ``uri`` into ``local_dir``, verified; return the local path.

    Files go to a staging directory, are checked against the marker (size, SHA-256), and
    the directory is renamed into place only when all match (ArtifactIntegrityError names
    the ones that do not). NotPublishedError when ``uri`` is not complete. A ``local_dir``
    that already holds exactly the published files is returned as it is; any other
    non-empty one is refused unless ``overwrite`` and it is a complete ``kind`` output
    (`vlmrl.atomic.check_output`).
    """
    uri = os.fspath(uri)
    where = display(uri)
    fs, root = _open_fs(uri, storage_options)
    fs.invalidate_cache(root)
    marker = _require_marker(fs, root, uri)
    files = marker["files"]
    local = Path(local_dir)
    if local.is_dir() and any(local.iterdir()) and _holds_exactly(local, files):
        log.info("%s already holds %s", local, where)
        return local.resolve()
    with atomic_directory(local, overwrite, kind=kind or FETCHED) as staging:
        rels = sorted(files)
        for parent in {(staging / rel).parent for rel in rels}:
            parent.mkdir(parents=True, exist_ok=True)
        if rels:
            fs.get([f"{root}/{rel}" for rel in rels], [str(staging / rel) for rel in rels])
        problems = []
        for rel in rels:
            path = staging / rel
            if not path.is_file():
                problems.append(f"{where}/{rel}: not downloaded (missing on the server?)")
                continue
            with open(path, "rb") as fh:
                problem = _mismatch(f"{where}/{rel}", files[rel], *_hash_stream(fh))
            if problem:
                problems.append(problem)
        if problems:
            raise ArtifactIntegrityError(f"{where}: {len(problems)} file(s) do not match the marker, nothing "
                                         f"fetched: " + "; ".join(problems[:_SHOWN]))
        again, _ = _load_json(fs, f"{root}/{MARKER}")
        if again != marker:
            raise NotPublishedError(f"{where}: the artifact was replaced or removed while it was being "
                                    f"fetched; fetch it again")
    log.info("fetched %s (%d files) into %s", where, len(files), local)
    return local.resolve()


def read_text(uri: str | os.PathLike[str], name: str, *, encoding: str = "utf-8",
              max_bytes: int = 64 << 20, storage_options: dict[str, Any] | None = None) -> str:
    """One published file (lineage.json, report.json...), verified against the marker."""
    uri = os.fspath(uri)
    where = display(uri)
    fs, root = _open_fs(uri, storage_options)
    fs.invalidate_cache(root)
    files = _require_marker(fs, root, uri)["files"]
    if name not in files:
        raise FileNotFoundError(f"{where}: {name!r} is not part of the published artifact "
                                f"({len(files)} files, e.g. {sorted(files)[:_SHOWN]})")
    if files[name]["size"] > max_bytes:
        raise ValueError(f"{where}/{name}: {files[name]['size']} bytes, over max_bytes={max_bytes}; fetch it")
    try:
        data = fs.cat_file(f"{root}/{name}")
    except FileNotFoundError:
        raise ArtifactIntegrityError(f"{where}/{name}: listed in the marker but missing") from None
    problem = _mismatch(f"{where}/{name}", files[name], len(data), hashlib.sha256(data).hexdigest())
    if problem:
        raise ArtifactIntegrityError(problem)
    return data.decode(encoding)


def _lineage_problems(where: str, text: str, files: dict[str, dict[str, Any]]) -> list[str]:
    """lineage.json parses, and records exactly the published files with the same hashes."""
    try:
        manifest = json.loads(text)
    except ValueError as exc:
        return [f"{where}/{LINEAGE}: does not parse ({exc})"]
    if not isinstance(manifest, dict):
        return [f"{where}/{LINEAGE}: not a JSON object"]
    recorded = manifest.get("files")
    if not isinstance(recorded, dict):
        return [f"{where}/{LINEAGE}: records no file hashes"]
    problems = []
    for rel, digest in sorted(recorded.items()):
        if rel not in files:
            problems.append(f"{where}/{rel}: recorded in {LINEAGE} but not published")
        elif files[rel]["sha256"] != digest:
            problems.append(f"{where}/{rel}: published content differs from {LINEAGE}")
    problems += [f"{where}/{rel}: published but not part of the checkpoint {LINEAGE} records"
                 for rel in sorted(set(files) - set(recorded) - {LINEAGE})]
    return problems


def audit_published(uri: str | os.PathLike[str], *,
                    storage_options: dict[str, Any] | None = None) -> list[str]:
    """Re-check a published artifact where it is stored; return the problems (empty: ok).

    The marker is present and valid; every file it lists is stored with its size and
    SHA-256 (streamed); nothing else lies under the prefix; a published ``lineage.json``
    parses and records the same files and hashes. Bucket and credential errors are raised.
    """
    uri = os.fspath(uri)
    where = display(uri)
    fs, root = _open_fs(uri, storage_options)
    state = _inspect(fs, root)
    if state.marker is None:
        return [_unfinished(uri, state)]
    files = state.marker["files"]
    problems = []
    if state.upload is not None and state.upload.get("upload_id") != state.marker["upload_id"]:
        problems.append(f"{where}/{UPLOAD}: names upload {state.upload.get('upload_id')}, the marker "
                        f"{state.marker['upload_id']}")
    for rel, entry in sorted(files.items()):
        if rel not in state.objects:
            problems.append(f"{where}/{rel}: missing")
            continue
        if state.objects[rel] != entry["size"]:
            problems.append(f"{where}/{rel}: {state.objects[rel]} bytes, the marker records {entry['size']}")
            continue
        with fs.open(f"{root}/{rel}", "rb", block_size=4 * _CHUNK) as fh:
            problem = _mismatch(f"{where}/{rel}", entry, *_hash_stream(fh))
        if problem:
            problems.append(problem)
    problems += [f"{where}/{rel}: not part of the published artifact"
                 for rel in sorted(set(state.objects) - set(files) - set(RESERVED))]
    if LINEAGE in files and not any(p.startswith(f"{where}/{LINEAGE}:") for p in problems):
        problems += _lineage_problems(where, read_text(uri, LINEAGE, storage_options=storage_options), files)
    return problems

