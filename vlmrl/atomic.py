"""Atomic directories and files: build next to the target, rename into place, never half-written.

Every writer of a directory output (frame datasets, models, checkpoints) goes through
`atomic_directory`, which also holds the one rule about replacing what is already there
(`check_output`): an output may only replace a previous output of the same kind that this
project wrote, and only when asked; an output that is, contains or lies inside one of its
inputs (media root, annotations, parent checkpoint, training datasets) is refused.

Staging (``.<name>.staging-p<pid>-h<host>-*``) and trash (``.<name>.old-p<pid>-h<host>-*``)
directories carry the pid and host of the process that made them, so the stale ones a
killed run left behind are recognised and cleaned up by the next write to the same target
(a previous output found in the trash of a run killed mid-swap is put back first).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

Protected = Iterable[tuple[str, str | os.PathLike[str]]]  # (role, path), e.g. ("media root", p)


@dataclass(frozen=True)
class OutputKind:
    """One kind of directory output and how to recognise a complete one this project wrote.

    ``marker`` is a JSON object file the writer puts in last; a directory is of this kind
    when the marker parses and has every key in ``keys`` and every (key, value) in ``values``.
    """

    label: str
    marker: str
    keys: tuple[str, ...] = ()
    values: tuple[tuple[str, object], ...] = ()

    def holds(self, path: Path) -> bool:
        try:
            data = json.loads((path / self.marker).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return (isinstance(data, dict) and all(k in data for k in self.keys)
                and all(data.get(k) == v for k, v in self.values))


def check_output(
    out_dir: str | os.PathLike[str],
    kind: OutputKind,
    *,
    overwrite: bool = False,
    protected: Protected = (),
    clean: bool = True,
) -> Path:
    """Raise unless writing a `kind` output to `out_dir` loses nothing; return the resolved path.

    Refused: a path that is, contains or lies inside a `protected` input (ValueError); an
    existing file, or a non-empty directory that is not a complete `kind` output
    (FileExistsError, with or without overwrite); an existing `kind` output without
    `overwrite` (FileExistsError). An empty directory may always be used.
    With `clean`, leftovers of killed writers are cleaned up first (`clean_stale`), so the
    decision sees the target as it will be at the end of the write (a previous output a
    killed swap left in the trash is back in place).
    """
    out = Path(out_dir).resolve()
    clashes = []
    for role, path in protected:
        p = Path(path).resolve()
        relation = ("is" if out == p else "lies inside" if out.is_relative_to(p)
                    else "contains" if p.is_relative_to(out) else None)
        if relation:
            clashes.append(f"{relation} the {role} {p}")
    if clashes:
        raise ValueError(f"refusing to write the {kind.label} to {out}: it {', '.join(clashes)}")
    if clean:
        clean_stale(out)
    if not (out.exists() or out.is_symlink()):
        return out
    if out.is_dir() and not any(out.iterdir()):
        return out
    if not out.is_dir() or not kind.holds(out):
        raise FileExistsError(
            f"refusing to replace {out}: it exists and is not a {kind.label} written by vlmrl "
            f"(no valid {kind.marker}); choose another output path"
        )
    if not overwrite:
        raise FileExistsError(
            f"{out} already holds a {kind.label}; pass overwrite=True (--overwrite) to replace it"
        )
    return out


def _host_tag() -> str:
    """This host and pid namespace, in staging / trash names: a pid is only comparable with
    pids of the same namespace (containers sharing a volume and a hostname have their own)."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return hashlib.sha256(f"{socket.gethostname()}|{namespace}".encode()).hexdigest()[:16]


HOST_TAG = _host_tag()


def _owner_tag() -> str:
    return f"p{os.getpid()}-h{HOST_TAG}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def stale_siblings(out_dir: str | os.PathLike[str]) -> tuple[list[Path], list[Path]]:
    """(removable, unknown): leftover staging / trash directories of `out_dir`.

    Removable ones were made on this host by a process that is gone; unknown ones were made
    elsewhere, by a live process, or by an older version without an owner in the name.
    """
    out = Path(out_dir).resolve()
    if not out.parent.is_dir():
        return [], []
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(?:staging|old)-(?:p(\d+)-h([A-Za-z0-9]*)-)?")
    removable, unknown = [], []
    for path in sorted(out.parent.iterdir()):
        m = pattern.match(path.name)
        if not m or not path.is_dir() or path.is_symlink():
            continue
        mine = m.group(1) is not None and m.group(2) == HOST_TAG
        (removable if mine and not _pid_alive(int(m.group(1))) else unknown).append(path)
    return removable, unknown


def clean_stale(out_dir: str | os.PathLike[str]) -> list[Path]:
    """Remove the staging / trash directories that dead processes left next to `out_dir`.

    A trash directory holding the previous output while `out_dir` is missing (a kill between
    the two renames of a swap) is restored first. Others are reported in the log and kept.
    Returns what was removed or restored.
    """
    out = Path(out_dir).resolve()
    removable, unknown = stale_siblings(out)
    for path in unknown:
        log.warning("leftover %s next to %s is not removed (owner unknown or still running)",
                    path.name, out)
    for path in removable:
        previous = path / out.name
        if ".old-" in path.name and previous.is_dir() and not (out.exists() or out.is_symlink()):
            os.replace(previous, out)
            log.warning("restored %s from %s (a run was killed while replacing it)", out, path)
        log.warning("removing %s left by a killed run", path)
        shutil.rmtree(path, ignore_errors=True)
    return removable


@contextmanager
def atomic_directory(
    out_dir: str | os.PathLike[str],
    overwrite: bool = False,
    *,
    kind: OutputKind,
    protected: Protected = (),
) -> Iterator[Path]:
    """Yield a staging directory next to `out_dir`; on success it is renamed to `out_dir`.

    `check_output` decides first whether `out_dir` may be written (see there). On error
    the staging directory is removed and `out_dir` is untouched. With overwrite, an
    existing output of the same kind is replaced (moved aside, then deleted after the swap).
    """
    out = check_output(out_dir, kind, overwrite=overwrite, protected=protected)
    out.parent.mkdir(parents=True, exist_ok=True)
    tag = _owner_tag()
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-{tag}", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary directory
    try:
        yield staging
        # checked again: the target may have changed while the output was being built
        check_output(out, kind, overwrite=overwrite, clean=False)
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{tag}", dir=out.parent))
            os.replace(out, trash / out.name)
            os.replace(staging, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file through a temporary sibling and a rename: readers never see half of it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
