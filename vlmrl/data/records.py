"""The sample record (Video-R1 format) and validated loading of annotation files.

One record is one question about one image or video::

    {"problem_id": "mot-0001", "problem": "Which way does the square move?",
     "data_type": "video", "problem_type": "multiple choice",
     "options": ["A. left", "B. right"], "solution": "<answer>B</answer>",
     "path": "videos/mot-0001.mp4", "data_source": "synthetic/motion",
     "process": "<think>...</think>"}

`process` (chain-of-thought) is optional. Besides Video-R1's five problem types, the
Visual-RFT / VLM-R1 types are accepted: classification (a class name), grounding
(``<answer>[x1, y1, x2, y2]</answer>``), detection (Visual-RFT's
``[{"Position": [...], "Confidence": c}]`` list or "No Objects") and ovd (VLM-R1's
``[{"bbox_2d": [...], "label": ...}]`` list or None).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DATA_TYPES = ("image", "video")
PROBLEM_TYPES = (
    "multiple choice",
    "numerical",
    "OCR",
    "free-form",
    "regression",
    "classification",
    "grounding",
    "detection",
    "ovd",
)
REQUIRED_FIELDS = ("problem_id", "problem", "data_type", "problem_type", "solution", "path")
OPTIONAL_FIELDS = ("options", "data_source", "process")

_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_OPTION_RE = re.compile(r"^\s*\(?([A-Z])[.)]\s*\S")


@dataclass(frozen=True)
class Record:
    """One validated sample in the Video-R1 record format."""

    problem_id: str
    problem: str
    data_type: str
    problem_type: str
    solution: str
    path: str
    options: list[str] = field(default_factory=list)
    data_source: str = ""
    process: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RowError:
    """A rejected annotation row: which file, which row (0-based), which field, why."""

    file: str
    row: int
    field: str
    message: str
    problem_id: str | None = None

    def __str__(self) -> str:
        pid = f" (problem_id={self.problem_id!r})" if self.problem_id else ""
        return f"{self.file}: row {self.row}{pid}: field {self.field!r}: {self.message}"


class AnnotationError(ValueError):
    """Raised in strict mode for the first bad row; carries every row error found."""

    def __init__(self, errors: list[RowError]):
        self.errors = errors
        more = f" (and {len(errors) - 1} more bad rows)" if len(errors) > 1 else ""
        super().__init__(f"{errors[0]}{more}")


class MediaPathError(ValueError):
    """A media path that is absolute, escapes its root or does not exist."""


@dataclass
class LoadedAnnotations:
    """Valid records (with their row index in the file) and the rejected rows."""

    file: str
    records: list[Record]
    rows: list[int]
    errors: list[RowError]


def family_of(data_source: str | None) -> str:
    """The question family of a data_source: its last part ("synthetic/motion" -> "motion")."""
    return (data_source or "").rsplit("/", 1)[-1]


def read_rows(path: str | os.PathLike[str]) -> list[Any]:
    """Read a JSON list or a JSONL file; a JSONL line that is not JSON names its line."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON: {exc}") from exc
        return rows
    rows = []
    for lineno, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {lineno + 1} is not valid JSON: {exc}") from exc
    return rows


def validate_row(row: Any, file: str, index: int) -> Record | RowError:
    """Validate one raw row into a `Record`, or describe the first problem found."""

    def err(fld: str, msg: str) -> RowError:
        pid = row.get("problem_id") if isinstance(row, dict) else None
        return RowError(file, index, fld, msg, str(pid) if pid is not None else None)

    if not isinstance(row, dict):
        return err("<row>", f"expected a JSON object, got {type(row).__name__}")
    for name in REQUIRED_FIELDS:
        if name not in row or row[name] is None:
            return err(name, "missing")
    values: dict[str, Any] = {}
    for name in ("problem", "data_type", "problem_type", "solution", "path"):
        if not isinstance(row[name], str):
            return err(name, f"expected a string, got {type(row[name]).__name__}")
        values[name] = row[name]
    pid = row["problem_id"]
    if not isinstance(pid, str | int) or isinstance(pid, bool) or str(pid).strip() == "":
        return err("problem_id", f"expected a non-empty string or integer, got {pid!r}")
    values["problem_id"] = str(pid)
    if values["data_type"] not in DATA_TYPES:
        return err("data_type", f"{values['data_type']!r} is not one of {list(DATA_TYPES)}")
    if values["problem_type"] not in PROBLEM_TYPES:
        return err(
            "problem_type", f"{values['problem_type']!r} is not one of {list(PROBLEM_TYPES)}"
        )
    if not values["problem"].strip():
        return err("problem", "empty question")
    if not values["path"].strip():
        return err("path", "empty media path")
    if not _ANSWER_RE.search(values["solution"]):
        return err("solution", f"no <answer>...</answer> in {values['solution'][:80]!r}")

    options = row.get("options") or []
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        return err("options", "expected a list of strings")
    if values["problem_type"] == "multiple choice":
        if len(options) < 2:
            return err("options", "a multiple-choice question needs at least two options")
        letters = []
        for opt in options:
            m = _OPTION_RE.match(opt)
            if not m:
                return err("options", f"option {opt!r} does not start with a letter like 'A.'")
            letters.append(m.group(1))
        answer = _ANSWER_RE.search(values["solution"]).group(1).strip()  # type: ignore[union-attr]
        if answer[:1] not in letters:
            return err("solution", f"answer {answer!r} is not one of the option letters {letters}")
    values["options"] = list(options)
    for name in ("data_source", "process"):
        value = row.get(name) or ""
        if not isinstance(value, str):
            return err(name, f"expected a string, got {type(value).__name__}")
        values[name] = value
    return Record(**values)


def load_annotations(
    path: str | os.PathLike[str], *, strict: bool = False
) -> LoadedAnnotations:
    """Load and validate every row of an annotation file (JSON list or JSONL).

    Bad rows are collected as `RowError` (file, row index, field) and returned; with
    ``strict=True`` the first bad row raises `AnnotationError` instead. Nothing is dropped
    silently: callers report ``errors``.
    """
    file = str(path)
    raw = read_rows(path)
    if not isinstance(raw, list):
        raise ValueError(f"{file}: expected a JSON list of records, got {type(raw).__name__}")
    records, rows, errors = [], [], []
    seen: dict[str, int] = {}
    for index, row in enumerate(raw):
        result = validate_row(row, file, index)
        if isinstance(result, Record) and result.problem_id in seen:
            result = RowError(
                file, index, "problem_id",
                f"duplicate of row {seen[result.problem_id]}", result.problem_id,
            )
        if isinstance(result, RowError):
            errors.append(result)
            continue
        seen[result.problem_id] = index
        records.append(result)
        rows.append(index)
    if strict and errors:
        raise AnnotationError(errors)
    return LoadedAnnotations(file=file, records=records, rows=rows, errors=errors)


def resolve_media(root: str | os.PathLike[str], relative: str) -> Path:
    """Resolve a record's media path inside ``root``, refusing anything that escapes it.

    Absolute paths, ``..`` components that leave the root and symlinks whose target lies
    outside the root raise `MediaPathError`; so does a path that does not exist.
    """
    root_real = Path(root).resolve(strict=True)
    rel = Path(relative)
    if rel.is_absolute() or relative.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", relative):
        raise MediaPathError(f"media path {relative!r} is absolute; it must be relative to {root}")
    candidate = root_real / rel
    if not _is_within(Path(os.path.normpath(candidate)), root_real):
        raise MediaPathError(f"media path {relative!r} escapes the media root {root}")
    try:
        resolved = candidate.resolve(strict=True)
    except FileNotFoundError:
        raise MediaPathError(f"media file {relative!r} not found under {root}") from None
    if not _is_within(resolved, root_real):
        raise MediaPathError(
            f"media path {relative!r} resolves to {resolved}, outside the media root {root}"
        )
    if not resolved.is_file():
        raise MediaPathError(f"media path {relative!r} under {root} is not a regular file")
    return resolved


def _is_within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def dump_records(records: Iterable[Record | dict[str, Any]], path: str | os.PathLike[str]) -> None:
    """Write records as a JSON list (the Video-R1 file layout)."""
    rows = [r.to_dict() if isinstance(r, Record) else r for r in records]
    Path(path).write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
