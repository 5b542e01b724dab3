"""Campaign cases for issue 13's findings 2 and 4: one bad row, file or media file.

Rows (finding 2): a media path that the file system cannot resolve (symlink loops, NUL
bytes, names too long, a file used as a directory, lone surrogates), an annotation line
that is not UTF-8 or not JSON. Each must cost its own row only: rejected, counted and
named in the manifest (row, field, reason) while the good rows are kept.

Files: an annotation file that cannot be read as a whole (Latin-1, truncated, a top level
that is not a list, empty, a directory, binary) must be refused with a message naming the
file; byte-order marks and CRLF line ends are read correctly.

Media (finding 4): MP4s whose clock is broken (timescale 0, frame durations 0) decode to
fps ~0 or NaN and repeated frames; they must be rejected with a reason, and sound videos
(including a still scene, whose frames really are identical) kept with the right frames.

Every input is built in the case's scratch directory: a small H.264 video written with
PyAV whose frame ``i`` is flat grey ``20 + 7 i``, so a kept frame can be checked against
the index it claims to be.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import struct
from collections.abc import Callable, Iterable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from vlmrl.doctor.campaign import Case, Result, expect_rejection

GREY0, GREY_STEP = 20, 7  # frame i of a test video is flat grey GREY0 + GREY_STEP * i
_CONTAINERS = ("moov", "trak", "mdia", "minf", "stbl", "edts")


def write_video(path: Path, frames: int = 30, fps: int = 10, size: int = 64,
                still: bool = False, durations_ms: list[int] | None = None) -> Path:
    """A small H.264 MP4 (moov after mdat, no B-frames) whose frame i is grey
    ``GREY0 + GREY_STEP * i`` (all ``GREY0`` when ``still``); ``durations_ms`` gives each
    frame its own duration (a variable frame rate) instead of ``1 / fps``."""
    import av

    durations = durations_ms or [1000 // fps] * frames
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"bf": "0"}  # presentation times are then the durations' sums
        stream.codec_context.time_base = Fraction(1, 1000)
        pts = 0
        for i, duration in enumerate(durations):
            grey = GREY0 if still else GREY0 + GREY_STEP * i
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), grey, np.uint8),
                                               format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            pts += duration
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def mp4_boxes(data: bytes) -> dict[str, tuple[int, int]]:
    """Offset and size of each box (the first of each type), descending into containers."""
    found: dict[str, tuple[int, int]] = {}

    def walk(start: int, end: int) -> None:
        i = start
        while i + 8 <= end:
            size, kind = struct.unpack(">I4s", data[i:i + 8])
            if size < 8:
                return
            found.setdefault(kind.decode("latin-1"), (i, size))
            if kind.decode("latin-1") in _CONTAINERS:
                walk(i + 8, i + size)
            i += size

    walk(0, len(data))
    return found


def zero_timescale(data: bytes, box: str = "mdhd") -> bytes:
    """The MP4 with the timescale of ``box`` (mdhd: the track's, mvhd: the movie's) set to 0."""
    out = bytearray(data)
    offset, _ = mp4_boxes(data)[box]
    out[offset + 20:offset + 24] = b"\0\0\0\0"  # size, type, version+flags, 2 dates, timescale
    return bytes(out)


def set_durations(data: bytes, deltas: list[int]) -> bytes:
    """The MP4 with its sample durations (``stts``) replaced, one entry per sample.

    The box grows, so its ancestors' sizes are fixed up; chunk offsets stay valid because
    the media data comes before ``moov`` in the files `write_video` writes.
    """
    boxes = mp4_boxes(data)
    if boxes["mdat"][0] > boxes["moov"][0]:
        raise ValueError("set_durations needs mdat before moov")
    offset, size = boxes["stts"]
    body = struct.pack(">II", 0, len(deltas)) + b"".join(struct.pack(">II", 1, d) for d in deltas)
    stts = struct.pack(">I4s", 8 + len(body), b"stts") + body
    out = bytearray(data[:offset] + stts + data[offset + size:])
    grow = len(stts) - size
    for name in ("moov", "trak", "mdia", "minf", "stbl"):
        at, old = boxes[name]
        out[at:at + 4] = struct.pack(">I", old + grow)
    return bytes(out)


def record(pid: str, path: str, **extra: Any) -> dict[str, Any]:
    return {"problem_id": pid, "problem": "How bright is the clip?", "data_type": "video",
            "problem_type": "numerical", "solution": "<answer>1</answer>", "path": path, **extra}


def _media(work: Path) -> Path:
    root = work / "media"
    root.mkdir()
    write_video(root / "good.mp4")
    return root


def _extract(work: Path, annotations: Path, media: Path, name: str = "out"):
    from vlmrl.data.extract import extract_dataset
    from vlmrl.data.frames import FrameOptions

    return extract_dataset(annotations, media, work / name, FrameOptions(), workers=1, progress=False)


def _write_rows(work: Path, rows: list[Any], name: str = "ann.json") -> Path:
    path = work / name
    path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    return path


def _row_outcome(result: Any, row: int, field: str, fragment: str, kept: int) -> Result:
    """HANDLED when row ``row`` is rejected on ``field`` with ``fragment`` in its reason,
    every row is accounted for and the ``kept`` good rows are in the dataset."""
    m = result.manifest
    counts = m["counts"]
    if counts["kept"] + counts["rejected"] != counts["rows"]:
        return Result.silent(f"rows unaccounted for: {counts}")
    hits = [r for r in m["rejected"] if r["row"] == row]
    if not hits:
        return Result.silent(f"row {row} neither rejected nor reported (kept {counts['kept']})")
    reason = hits[0]["reason"]
    if hits[0]["field"] != field or fragment not in reason:
        return Result.crashed(f"row {row} rejected as {hits[0]['field']!r}: {reason!r}, "
                              f"expected {field!r} naming {fragment!r}")
    if counts["kept"] != kept:
        return Result.silent(f"good rows lost: kept {counts['kept']}, expected {kept}")
    return Result.handled(f"row {row} rejected ({field}: {reason[:160]}); {kept} good row(s) kept")


def _bad_path_case(make: Callable[[Path], str], fragment: str) -> Callable[[Path], Result]:
    """A case: one good row, then one whose media path ``make(media_root)`` returns."""

    def run(work: Path) -> Result:
        media = _media(work)
        rows = [record("good", "good.mp4"), record("bad", make(media))]
        return _row_outcome(_extract(work, _write_rows(work, rows), media), 1, "path", fragment, 1)

    return run


def _self_loop(media: Path) -> str:
    os.symlink("loop.mp4", media / "loop.mp4")
    return "loop.mp4"


def _two_link_loop(media: Path) -> str:
    os.symlink("b.mp4", media / "a.mp4")
    os.symlink("a.mp4", media / "b.mp4")
    return "a.mp4"


def _loop_in_directory(media: Path) -> str:
    os.symlink("sub", media / "sub")  # a directory link that points at itself
    return "sub/clip.mp4"


def _directory(media: Path) -> str:
    (media / "clip.mp4").mkdir()
    return "clip.mp4"


def _fifo(media: Path) -> str:
    os.mkfifo(media / "pipe.mp4")
    return "pipe.mp4"


def _jsonl_case(lines: list[bytes], row: int, fragment: str, kept: int) -> Callable[[Path], Result]:
    """A case: a JSONL file with good lines and one bad line (bytes as written)."""

    def run(work: Path) -> Result:
        media = _media(work)
        path = work / "ann.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        return _row_outcome(_extract(work, path, media), row, "<row>", fragment, kept)

    return run


def _line(pid: str, **extra: Any) -> bytes:
    return json.dumps(record(pid, "good.mp4", **extra)).encode()


def _surrogate_case(field: str) -> Callable[[Path], Result]:
    def run(work: Path) -> Result:
        media = _media(work)
        bad = json.dumps(record("bad", "good.mp4", problem="PLACEHOLDER"))
        bad = bad.replace('"PLACEHOLDER"', '"\\ud800 ?"') if field == "problem" else \
            bad.replace('"good.mp4"', '"\\ud800.mp4"')
        path = work / "ann.jsonl"
        path.write_text(_line("good").decode() + "\n" + bad + "\n", encoding="utf-8")
        return _row_outcome(_extract(work, path, media), 1, field, "lone surrogate", 1)

    return run


def _huge_line(work: Path) -> Result:
    """A 2 MB question is odd but valid: kept byte for byte, next to the other rows."""
    from vlmrl.data.extract import load_frame_dataset

    media = _media(work)
    text = "why? " * 400_000
    path = work / "ann.jsonl"
    path.write_bytes(_line("good") + b"\n" + _line("huge", problem=text) + b"\n")
    result = _extract(work, path, media)
    ds, _ = load_frame_dataset(result.path)
    got = {r["problem_id"]: r["problem"] for r in ds}
    if result.rejected or got.get("huge") != text or "good" not in got:
        return Result.silent(f"huge row not kept intact: rejected {result.manifest['rejected']}")
    return Result.handled(f"{len(text):,}-character question kept intact with the other row")


def _file_case(write: Callable[[Path], Path], *must_name: str) -> Callable[[Path], Result]:
    """A case: an annotation file that is bad as a whole must be refused, naming the file."""

    def run(work: Path) -> Result:
        media = _media(work)
        path = write(work)
        return expect_rejection(lambda: _extract(work, path, media), str(path), *must_name)

    return run


def _readable_case(write: Callable[[Path], Path], rows: int) -> Callable[[Path], Result]:
    """A case: an unusual but well-defined file (BOM, CRLF) must read as the same rows."""

    def run(work: Path) -> Result:
        media = _media(work)
        result = _extract(work, write(work), media)
        if result.kept != rows or result.rejected:
            return Result.silent(f"kept {result.kept} of {rows} rows: {result.manifest['rejected']}")
        return Result.handled(f"all {rows} rows read and kept")

    return run


def _rows_json(rows: int = 2, **dumps: Any) -> str:
    return json.dumps([record(f"q{i}", "good.mp4", problem=f"Café {i}?") for i in range(rows)],
                      ensure_ascii=False, **dumps)


def _bytes_file(name: str, make: Callable[[], bytes]) -> Callable[[Path], Path]:
    def write(work: Path) -> Path:
        path = work / name
        path.write_bytes(make())
        return path

    return write


def _directory_file(work: Path) -> Path:
    path = work / "ann.json"
    path.mkdir()
    return path


def _cli_case(make: Callable[[Path], Path]) -> Callable[[Path], Result]:
    """A case through the ``vlmrl`` command: exit 2 with an error naming the file."""

    def run(work: Path) -> Result:
        from vlmrl.cli import main

        media = _media(work)
        path = make(work)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(["data", "extract", "--annotations", str(path), "--media-root",
                         str(media), "--out", str(work / "out"), "--workers", "1"])
        message = err.getvalue().strip()
        if code == 0:
            return Result.silent(f"exit 0 for {path}")
        if str(path) not in message:
            return Result.crashed(f"exit {code} without naming {path}: {message[:300]}")
        return Result.rejected(f"exit {code}: {message[:300]}")

    return run


# -- media whose clock is broken ---------------------------------------------------------


def _media_case(make: Callable[[bytes], bytes], fragment: str) -> Callable[[Path], Result]:
    """A case: a good video and a copy of it whose container was broken by ``make``: the
    broken one is rejected naming ``fragment``, the good one kept with the right frames."""

    def run(work: Path) -> Result:
        media = _media(work)
        (media / "bad.mp4").write_bytes(make((media / "good.mp4").read_bytes()))
        rows = [record("good", "good.mp4"), record("bad", "bad.mp4")]
        result = _extract(work, _write_rows(work, rows), media)
        wrong = _wrong_frames(result)
        if "bad" in wrong:
            return Result.silent(f"broken video kept: {wrong['bad']}")
        if wrong:
            return Result.silent(f"sound video stored wrongly: {wrong}")
        return _row_outcome(result, 1, "path", fragment, 1)

    return run


def _kept_right_case(make: Callable[[Path], None], detail: str,
                     clocks: dict[str, list[float]] | None = None) -> Callable[[Path], Result]:
    """A case: an odd but sound video must be kept, with the frames and times it has."""

    def run(work: Path) -> Result:
        media = _media(work)
        make(media)
        rows = [record("good", "good.mp4"), record("odd", "odd.mp4")]
        result = _extract(work, _write_rows(work, rows), media)
        if result.rejected:
            return Result.silent(f"sound video rejected: {result.manifest['rejected']}")
        wrong = _wrong_frames(result, still={"odd"} if "still" in detail else (), clocks=clocks)
        if wrong:
            return Result.silent(f"kept with wrong frames: {wrong}")
        return Result.handled(f"{detail}: kept, every frame is the one its index claims")

    return run


def _wrong_frames(result: Any, still: Iterable[str] = (),
                  clocks: dict[str, list[float]] | None = None) -> dict[str, str]:
    """Kept rows whose fps, timestamps or frames differ from what the test video holds:
    frame i is grey ``GREY0 + GREY_STEP * i`` (``GREY0`` in a still scene) and starts at
    ``clocks[pid][i]`` seconds (default: 10 fps, where the fps must also be 10)."""
    import math

    from vlmrl.data.extract import frames_array, load_frame_dataset

    ds, _ = load_frame_dataset(result.path)
    wrong = {}
    for row in ds:
        pid, indices = row["problem_id"], row["frame_indices"]
        greys = frames_array(row).reshape(len(indices), -1).mean(axis=1)
        want = [GREY0 + (0 if pid in still else GREY_STEP * i) for i in indices]
        clock = (clocks or {}).get(pid)
        times = clock or [i / 10 for i in range(30)]
        want_stamps = [times[i] - times[indices[0]] for i in indices]
        if not (math.isfinite(row["fps"]) and row["fps"] > 0) or (
                clock is None and abs(row["fps"] - 10) > 0.1):
            wrong[pid] = f"fps {row['fps']} (the video has 10)"
        elif np.abs(greys - np.array(want)).max() > 4:
            wrong[pid] = (f"frames {indices} look like greys {[round(float(g)) for g in greys]}, "
                          f"expected {want}")
        elif np.abs(np.array(row["timestamps"]) - np.array(want_stamps)).max() > 0.02:
            wrong[pid] = f"timestamps {[round(t, 3) for t in row['timestamps']]}, expected {want_stamps}"
    return wrong


def _odd_file(name: str, make: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def write(media: Path) -> None:
        (media / name).write_bytes(make((media / "good.mp4").read_bytes()))

    return write


def _still_video(media: Path) -> None:
    write_video(media / "odd.mp4", still=True)


_VFR_MS = [100 * (1 + i % 3) for i in range(30)]  # 100, 200, 300 ms frames


def _vfr_video(media: Path) -> None:
    write_video(media / "odd.mp4", durations_ms=_VFR_MS)


def _stts_delta(data: bytes) -> int:
    return struct.unpack(">I", data[mp4_boxes(data)["stts"][0] + 20:][:4])[0]


CASES: list[Case] = [
    # rows: a media path the file system cannot resolve is that row's rejection
    Case("row-media-symlink-self-loop", "rows", _bad_path_case(_self_loop, "symlink loop")),
    Case("row-media-symlink-two-link-loop", "rows", _bad_path_case(_two_link_loop, "symlink loop")),
    Case("row-media-symlink-loop-in-directory", "rows",
         _bad_path_case(_loop_in_directory, "symlink loop")),
    Case("row-media-path-nul-byte", "rows", _bad_path_case(lambda m: "go\x00od.mp4", "NUL byte")),
    Case("row-media-path-name-too-long", "rows",
         _bad_path_case(lambda m: "x" * 300 + ".mp4", "name too long")),
    Case("row-media-path-file-as-directory", "rows",
         _bad_path_case(lambda m: "good.mp4/clip.mp4", "Not a directory")),
    Case("row-media-path-is-directory", "rows", _bad_path_case(_directory, "not a regular file")),
    Case("row-media-path-is-fifo", "rows", _bad_path_case(_fifo, "not a regular file")),
    Case("row-media-path-lone-surrogate", "rows", _surrogate_case("path")),
    Case("row-question-lone-surrogate", "rows", _surrogate_case("problem")),
    # rows: one unreadable JSONL line is one rejected row
    Case("row-jsonl-broken-json-line", "rows",
         _jsonl_case([_line("a"), b"{oops", _line("b")], 1, "line 2 is not valid JSON", 2)),
    Case("row-jsonl-truncated-last-line", "rows",
         _jsonl_case([_line("a"), _line("b")[:40]], 1, "line 2 is not valid JSON", 1)),
    Case("row-jsonl-latin1-line", "rows",
         _jsonl_case([_line("a"), json.dumps(record("b", "good.mp4", problem="Café?"),
                                             ensure_ascii=False).encode("latin-1"), _line("c")],
                     1, "line 2 is not UTF-8", 2)),
    Case("row-jsonl-deeply-nested-line", "rows",
         _jsonl_case([_line("a"), b"[" * 100_000 + b"]" * 100_000], 1, "nested too deeply", 1)),
    Case("row-jsonl-5000-digit-integer", "rows",
         _jsonl_case([_line("a"), _line("b").replace(b'"b"', b"9" * 5000)], 1,
                     "integer string conversion", 1)),
    Case("row-jsonl-raw-nul-in-line", "rows",
         _jsonl_case([_line("a"), _line("b").replace(b"How", b"H\x00w")], 1,
                     "line 2 is not valid JSON", 1)),
    Case("row-jsonl-huge-line", "rows", _huge_line),
    # files: a file that is bad as a whole is refused, naming the file (and where)
    Case("file-latin1-json-list", "files",
         _file_case(_bytes_file("ann.json", lambda: _rows_json().encode("latin-1")),
                    "not valid UTF-8 at byte", "line 1")),
    Case("file-latin1-jsonl-every-line", "files",
         _file_case(_bytes_file("ann.jsonl", lambda: b"\n".join(
             json.dumps(record(f"q{i}", "good.mp4", problem="Café?"), ensure_ascii=False)
             .encode("latin-1") for i in range(3))), "line 1 is not UTF-8")),
    Case("file-cp1252-json-list", "files",
         _file_case(_bytes_file("ann.json", lambda: _rows_json().replace("Café", "“Café”")
                                .encode("cp1252")), "not valid UTF-8 at byte")),
    Case("file-truncated-json-list", "files",
         _file_case(_bytes_file("ann.json", lambda: _rows_json(indent=1).encode()[:-40]),
                    "not valid JSON", "line")),
    Case("file-top-level-object", "files",
         _file_case(_bytes_file("ann.json", lambda: json.dumps(
             {"data": [record("q", "good.mp4")]}, indent=1).encode()), "top level is a JSON object")),
    Case("file-top-level-string", "files",
         _file_case(_bytes_file("ann.json", lambda: b'"videos.json"\n'), "top level is a JSON string")),
    Case("file-top-level-null", "files",
         _file_case(_bytes_file("ann.json", lambda: b"null"), "top level is a JSON null")),
    Case("file-empty", "files", _file_case(_bytes_file("ann.json", lambda: b""), "empty")),
    Case("file-whitespace-only", "files",
         _file_case(_bytes_file("ann.json", lambda: b" \n\r\n\t\n"), "empty")),
    Case("file-random-bytes", "files",
         _file_case(_bytes_file("ann.json", lambda: np.random.default_rng(0).bytes(4096)),
                    "no line is a JSON record")),
    Case("file-is-a-directory", "files", _file_case(_directory_file, "Is a directory")),
    Case("cli-file-is-a-directory", "files", _cli_case(_directory_file)),
    Case("cli-file-latin1", "files",
         _cli_case(_bytes_file("ann.json", lambda: _rows_json().encode("latin-1")))),
    Case("cli-file-missing", "files", _cli_case(lambda work: work / "missing.json")),
    # files: well-defined encodings and line ends are read as the same rows
    Case("file-utf8-bom-json-list", "files",
         _readable_case(_bytes_file("ann.json", lambda: b"\xef\xbb\xbf" + _rows_json(indent=1).encode()), 2)),
    Case("file-utf8-bom-jsonl", "files",
         _readable_case(_bytes_file("ann.jsonl", lambda: b"\xef\xbb\xbf" + _line("a") + b"\n" + _line("b")), 2)),
    Case("file-utf16-bom-json-list", "files",
         _readable_case(_bytes_file("ann.json", lambda: _rows_json().encode("utf-16")), 2)),
    Case("file-utf32-bom-jsonl", "files",
         _readable_case(_bytes_file("ann.jsonl", lambda: (
             _line("a") + b"\n" + _line("b")).decode().encode("utf-32")), 2)),
    Case("file-utf16-le-without-bom-json-list", "files",
         _readable_case(_bytes_file("ann.json", lambda: _rows_json().encode("utf-16-le")), 2)),
    Case("file-jsonl-crlf", "files",
         _readable_case(_bytes_file("ann.jsonl", lambda: _line("a") + b"\r\n" + _line("b") + b"\r\n"), 2)),
    # media: a broken clock is rejected with a reason, never kept as fps ~0 / NaN or repeats
    Case("media-track-timescale-zero", "media", _media_case(zero_timescale, "broken clock")),
    Case("media-movie-and-track-timescale-zero", "media",
         _media_case(lambda d: zero_timescale(zero_timescale(d), "mvhd"),
                     "same picture for different frames")),
    Case("media-all-frame-durations-zero", "media",
         _media_case(lambda d: set_durations(d, [0] * 30), "share a presentation time")),
    Case("media-every-other-frame-duration-zero", "media",
         _media_case(lambda d: set_durations(d, [_stts_delta(d) if i % 2 else 0 for i in range(30)]),
                     "share a presentation time")),
    Case("media-last-frames-duration-zero", "media",
         _media_case(lambda d: set_durations(d, [_stts_delta(d)] * 20 + [0] * 10),
                     "share a presentation time")),
    # media: sound but unusual videos are kept with the frames they claim
    Case("media-movie-timescale-zero-only", "media",
         _kept_right_case(_odd_file("odd.mp4", lambda d: zero_timescale(d, "mvhd")),
                          "movie timescale 0, track clock sound")),
    Case("media-uneven-frame-durations", "media",
         _kept_right_case(_vfr_video, "a variable frame rate (100, 200, 300 ms frames)",
                          {"odd": [sum(_VFR_MS[:i]) / 1000 for i in range(30)]})),
    Case("media-still-scene", "media",
         _kept_right_case(_still_video, "a still scene (identical frames, confirmed in order)")),
]
