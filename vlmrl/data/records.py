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


class AnnotationFileError(ValueError):
    """An annotation file that cannot be read as a whole; the message names the file and,
    where known, the line and byte."""


@dataclass(frozen=True)
class UnreadableRow:
    """A JSONL line that is not readable JSON: `load_annotations` rejects it as its own row."""

    line: int  # 1-based line number in the file
    reason: str


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
    """Read a JSON list or a JSONL file: UTF-8, or UTF-16/32 as JSON detects them.

    A JSONL line that is not valid UTF-8 or not valid JSON becomes an `UnreadableRow` in
    its place, so one bad line costs one row, not the build. Problems with the file as a
    whole (unreadable, empty, not UTF-8 in a JSON list, broken JSON list, a top level that
    is not a list, no readable line at all) raise `AnnotationFileError` naming the file.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:  # a directory, no permission, an I/O error
        raise AnnotationFileError(
            f"{path}: cannot read the annotation file: {exc.strerror or exc}"
        ) from exc
    codec, data = _detect_codec(data)
    if not data.strip():
        raise AnnotationFileError(f"{path}: the annotation file is empty (no records)")
    if codec == "utf-8" and not data.lstrip().startswith(b"["):
        # JSONL: decoded line by line below, so a line that is not UTF-8 is one bad row
        _refuse_other_documents(path, data.decode("utf-8", errors="replace"))
        lines = data.split(b"\n")
    else:
        text = _decode(path, data, codec)
        if text.lstrip().startswith("["):
            try:
                return json.loads(text)
            except (ValueError, RecursionError) as exc:
                raise AnnotationFileError(f"{path}: not valid JSON: {_json_reason(exc)}") from None
        _refuse_other_documents(path, text)
        lines = [line.encode("utf-8") for line in text.split("\n")]
    rows, readable = [], 0
    for lineno, raw_line in enumerate(lines, start=1):
        if not raw_line.strip():
            continue
        try:
            line = raw_line.decode("utf-8")
        except UnicodeDecodeError as exc:
            rows.append(UnreadableRow(lineno, f"line {lineno} is not UTF-8 (byte 0x{raw_line[exc.start]:02x} "
                                              f"at column {exc.start + 1}); save the file as UTF-8"))
            continue
        try:
            rows.append(json.loads(line))
            readable += 1
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, int too long, too deep
            rows.append(UnreadableRow(lineno, f"line {lineno} is not valid JSON: {_json_reason(exc)}"))
    if not readable:
        first = rows[0].reason if rows else "no records"
        raise AnnotationFileError(f"{path}: no line is a JSON record, neither JSON list nor JSONL ({first})")
    return rows


def _detect_codec(data: bytes) -> tuple[str, bytes]:
    """The codec of a JSON file as RFC 8259 / `json.loads` detect it (a byte-order mark, or
    the NUL bytes of UTF-16/32 text), and the bytes to decode (a UTF-8 mark dropped)."""
    codec = json.detect_encoding(data)
    if codec == "utf-8-sig":
        return "utf-8", data[3:]
    return codec, data


def _decode(path: Path, data: bytes, codec: str) -> str:
    try:
        return data.decode(codec)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise AnnotationFileError(
            f"{path}: not valid {codec.upper()} at byte {exc.start} (line {line}, byte "
            f"0x{data[exc.start]:02x}); annotation files must be UTF-8 (is it Latin-1 or "
            "another legacy encoding? re-save it as UTF-8)"
        ) from None


def _refuse_other_documents(path: Path, text: str) -> None:
    """Refuse a file that is one JSON value but not a list of records: a scalar, or an
    object spread over several lines (a one-line object is JSONL with one row)."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return  # not a single JSON value: JSONL, read line by line
    if isinstance(value, dict) and "\n" not in text.strip():
        return
    kind = {dict: "object", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")
    raise AnnotationFileError(
        f"{path}: the top level is a JSON {kind}, expected a JSON list of records or JSONL "
        "(one record per line)"
    )


def _json_reason(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc)[:300]


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
    # The rewards' own solution parsers (lazy: vlmrl.rewards imports this module): a
    # solution they cannot read is refused here, not hours later inside RL or evaluation.
    from vlmrl.rewards.accuracy import check_solution
    from vlmrl.rewards.answers import parse_choice

    try:
        answer = check_solution(values["problem_type"], values["solution"])
    except ValueError as exc:
        return err("solution", f"the {values['problem_type']!r} reward cannot read it: {exc}")

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
        if parse_choice(answer) not in letters:
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
        result = _validate(row, file, index)
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
    outside the root raise `MediaPathError`; so does a path that does not exist, and one
    the file system cannot resolve (a NUL byte, a symlink loop, a name too long, a parent
    that is a file, no permission): every problem with one row's path is that row's.
    """
    root_real = Path(root).resolve(strict=True)
    if "\x00" in relative:
        raise MediaPathError(f"media path {relative!r} contains a NUL byte")
    rel = Path(relative)
    if rel.is_absolute() or relative.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", relative):
        raise MediaPathError(f"media path {relative!r} is absolute; it must be relative to {root}")
    candidate = root_real / rel
    if not _is_within(Path(os.path.normpath(candidate)), root_real):
        raise MediaPathError(f"media path {relative!r} escapes the media root {root}")
    try:
        resolved = candidate.resolve(strict=True)
        is_file = resolved.is_file()
    except FileNotFoundError:
        raise MediaPathError(f"media file {relative!r} not found under {root}") from None
    except RuntimeError as exc:  # Python < 3.13 reports a symlink loop as RuntimeError
        raise MediaPathError(f"media path {relative!r} under {root} is a symlink loop ({exc})") from None
    except (OSError, ValueError) as exc:  # ELOOP, ENAMETOOLONG, ENOTDIR, EACCES, unencodable
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise MediaPathError(f"media path {relative!r} under {root} cannot be resolved: {reason}") from None
    if not _is_within(resolved, root_real):
        raise MediaPathError(
            f"media path {relative!r} resolves to {resolved}, outside the media root {root}"
        )
    if not is_file:
        raise MediaPathError(f"media path {relative!r} under {root} is not a regular file")
    return resolved


def _is_within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _validate(row: Any, file: str, index: int) -> Record | RowError:
    """`validate_row` plus what only shows up later: an unreadable line, text that is not
    valid Unicode (lone surrogates from JSON escapes cannot be written to Arrow or hashed)
    and a validator that trips over an odd value. All are this row's rejection."""
    if isinstance(row, UnreadableRow):
        return RowError(file, index, "<row>", row.reason)
    try:
        result = validate_row(row, file, index)
    except (ValueError, TypeError, RecursionError) as exc:
        pid = row.get("problem_id") if isinstance(row, dict) else None
        return RowError(file, index, "<row>", f"cannot be validated: {type(exc).__name__}: "
                        f"{str(exc)[:200]}", None if pid is None else str(pid)[:100])
    if isinstance(result, RowError):
        return result
    for name, value in result.to_dict().items():
        for text in value if isinstance(value, list) else [value]:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                return RowError(file, index, name, f"not valid Unicode: lone surrogate "
                                f"{text[exc.start]!r} at character {exc.start}", result.problem_id)
    return result


def dump_records(records: Iterable[Record | dict[str, Any]], path: str | os.PathLike[str]) -> None:
    """Write records as a JSON list (the Video-R1 file layout)."""
    rows = [r.to_dict() if isinstance(r, Record) else r for r in records]
    Path(path).write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
