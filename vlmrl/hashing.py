"""Content hashes shared by datasets, checkpoints and the lineage audit."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values give equal strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def sha256_json(value: Any) -> str:
    """Hex SHA-256 of `canonical_json(value)`."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def sha256_tree(root: str | os.PathLike[str], exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """SHA-256 of every file under ``root`` keyed by its POSIX path relative to root."""
    root = Path(root)
    out: dict[str, str] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel in exclude:
            continue
        out[rel] = sha256_file(path)
    return out


def relative_ref(target: str | os.PathLike[str], base: str | os.PathLike[str]) -> str:
    """``target`` as a POSIX path relative to the directory ``base``.

    Manifests record references this way so that a copied tree refers to itself, not to
    the original it was copied from. Both are resolved first (atomic builds resolve theirs).
    """
    return Path(os.path.relpath(os.path.realpath(target), os.path.realpath(base))).as_posix()
