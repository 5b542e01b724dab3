"""Build a frame-extracted dataset: decode every video once, store frames as Arrow.

The output directory is a Hugging Face dataset (``datasets.load_from_disk``) with one
row per valid annotation row: the record fields, the sampled frames (``List(Image())``,
JPEG or PNG bytes) and the frame metadata. Next to it, ``manifest.json`` holds the
counts, every rejected row with its reason, the frame options and a content
fingerprint. Training and evaluation read frames from here and never decode video again.

The build is atomic: it is staged in a hidden sibling directory and renamed into place
only after the manifest is written, so a crash never leaves a complete-looking dataset.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import multiprocessing.forkserver
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps
from tqdm.auto import tqdm

from vlmrl.atomic import OutputKind, atomic_directory, check_output
from vlmrl.data.frames import DecodedVideo, DecodeError, FrameOptions, decode_video, load_image
from vlmrl.data.records import (
    LoadedAnnotations,
    MediaPathError,
    Record,
    load_annotations,
    resolve_media,
)
from vlmrl.hashing import relative_ref, sha256_file, sha256_json, sha256_tree
from vlmrl.json_view import JsonView

FORMAT = "vlmrl.frames/1"
MANIFEST = "manifest.json"
# what a dataset that extract_dataset wrote holds (the only kind it may replace)
FRAME_DATASET = OutputKind("frame dataset", MANIFEST, keys=("fingerprint",),
                           values=(("format", FORMAT),))


def dataset_features():
    """The Arrow schema of a frame dataset."""
    from datasets import Features, Image, List, Value

    return Features(
        {
            "problem_id": Value("string"),
            "problem": Value("string"),
            "data_type": Value("string"),
            "problem_type": Value("string"),
            "options": List(Value("string")),
            "solution": Value("string"),
            "path": Value("string"),
            "data_source": Value("string"),
            "process": Value("string"),
            "frames": List(Image()),
            "fps": Value("float32"),
            "num_source_frames": Value("int32"),
            "frame_indices": List(Value("int32")),
            "timestamps": List(Value("float32")),
            "decoder": Value("string"),
            "height": Value("int32"),
            "width": Value("int32"),
            "media_sha256": Value("string"),
        }
    )


@dataclass(frozen=True)
class Counts:
    """A build's row, media and frame counts."""

    rows: int  # annotation rows read, valid or not
    kept: int
    rejected: int
    media_files: int  # distinct media files decoded
    frames: int


class FrameManifest(JsonView):
    """Typed view of a frame dataset's manifest.json. The mapping is the JSON exactly as
    written (the audit hashes the file); the properties name what readers use."""

    def __repr__(self) -> str:
        return f"FrameManifest(fingerprint={self.fingerprint[:16]!r}, kept={self.counts.kept})"

    @property
    def fingerprint(self) -> str:
        """Content hash of the build's inputs (annotation rows, media bytes, options)."""
        return self._data["fingerprint"]

    @property
    def counts(self) -> Counts:
        c = self._data["counts"]
        return Counts(rows=c["rows"], kept=c["kept"], rejected=c["rejected"],
                      media_files=c["media_files"], frames=c["frames"])

    @property
    def reject_rate(self) -> float:
        """Rejected share of the annotation rows (0 for an empty file)."""
        return self.counts.rejected / max(1, self.counts.rows)

    @property
    def rejected(self) -> list[dict[str, Any]]:
        """Every rejected row: row, problem_id, field, reason."""
        return self._data.get("rejected", [])

    @property
    def options(self) -> dict[str, Any]:
        """The frame options (`FrameOptions.to_dict`)."""
        return self._data.get("options", {})

    @property
    def annotations(self) -> dict[str, Any]:
        """The annotation file: file (absolute path), ref (relative to the dataset), sha256."""
        return self._data["annotations"]

    @property
    def media_root(self) -> str:
        return self._data["media_root"]

    @property
    def media_root_ref(self) -> str | None:
        return self._data.get("media_root_ref")

    @property
    def media(self) -> dict[str, str]:
        """sha256 of each media file, by path relative to the media root."""
        return self._data.get("media", {})

    @property
    def decoders(self) -> dict[str, int]:
        return self._data.get("decoders", {})

    @property
    def files(self) -> dict[str, str]:
        """sha256 of each written dataset file (what `verify_frame_dataset` re-hashes)."""
        return self._data.get("files", {})

    @property
    def frames_per_second(self) -> float | None:
        return self._data.get("frames_per_second")


@dataclass
class ExtractResult:
    """Where the dataset is and what went into it.

    ``cpu_seconds``: where the build's CPU time went, summed over every process that
    worked on it: "hash" (media files); for videos the steps of `decode_video` ("probe",
    "decode", "confirm", "resize"); "image" (image load and resize); "encode" (PNG/JPEG);
    "rejected" (media that failed after hashing); and "write" (Arrow rows, the saved
    dataset, its file hashes, the manifest). Not in the manifest: timings are not content.
    """

    path: Path
    manifest: FrameManifest
    cpu_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        return self.manifest.fingerprint

    @property
    def kept(self) -> int:
        return self.manifest.counts.kept

    @property
    def rejected(self) -> int:
        return self.manifest.counts.rejected


@dataclass
class _Media:
    key: tuple[str, str]  # (relative path, data_type)
    sha256: str | None
    frames: list[bytes] | None
    meta: dict[str, Any] | None
    error: str | None
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # by stage, in its process


def extract_dataset(
    annotations: str | os.PathLike[str],
    media_root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    options: FrameOptions | None = None,
    *,
    workers: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> ExtractResult:
    """Validate ``annotations``, decode each referenced media file once, write the dataset.

    Bad annotation rows and undecodable or out-of-root media are rejected, counted and
    listed in the manifest with file/row/field and reason; they never abort the build.
    ``out`` may only replace a frame dataset, and only with ``overwrite``; it may not be,
    contain or lie inside the media root or the annotations (checked before any work).
    """
    opts = options or FrameOptions()
    out = Path(out)
    protected = [("annotations", annotations), ("media root", media_root)]
    check_output(out, FRAME_DATASET, overwrite=overwrite, protected=protected)
    media_root = Path(media_root)
    if not media_root.is_dir():
        raise NotADirectoryError(f"media root {media_root} is not a directory")
    started = time.perf_counter()
    loaded = load_annotations(annotations)
    rejected: list[dict[str, Any]] = [
        {"row": e.row, "problem_id": e.problem_id, "field": e.field, "reason": e.message}
        for e in loaded.errors
    ]

    # Resolve and confine media paths; group rows by media so each file is decoded once.
    tasks: dict[tuple[str, str], Path] = {}
    row_keys: list[tuple[int, Record, tuple[str, str]]] = []
    for row, rec in zip(loaded.rows, loaded.records, strict=True):
        key = (rec.path, rec.data_type)
        if key not in tasks:
            try:
                tasks[key] = resolve_media(media_root, rec.path)
            except MediaPathError as exc:
                rejected.append(_reject(row, rec, "path", str(exc)))
                continue
        row_keys.append((row, rec, key))
    refcount: dict[tuple[str, str], int] = {}
    for _, _, key in row_keys:
        refcount[key] = refcount.get(key, 0) + 1
    ordered = [(key, tasks[key]) for key in refcount]  # first-appearance order

    with atomic_directory(out, overwrite, kind=FRAME_DATASET, protected=protected) as staging:
        arrow_tmp = staging / "rows.arrow"
        media_hashes: dict[str, str] = {}
        n_frames = 0
        decoders: dict[str, int] = {}
        kept = 0
        cpu: dict[str, float] = {}  # by stage, summed over processes
        writing = 0.0
        # the pool starts on its first files now, while this process imports datasets
        items = [(key, str(p), opts) for key, p in ordered]
        with _OrderedMap(_process_media, items, workers,
                         costs=[_file_size(p) for _, p in ordered]) as results:
            from datasets.arrow_writer import ArrowWriter

            cache: dict[tuple[str, str], _Media] = {}
            with ArrowWriter(features=dataset_features(), path=str(arrow_tmp)) as writer:
                bar = tqdm(total=len(row_keys), desc="extract frames", unit="sample", disable=not progress)
                for row, rec, key in row_keys:
                    while key not in cache:
                        media = next(results)
                        cache[media.key] = media
                        for stage, spent in media.cpu_seconds.items():
                            cpu[stage] = cpu.get(stage, 0.0) + spent
                        if media.sha256:
                            media_hashes[media.key[0]] = media.sha256
                        if media.frames is not None:
                            decoders[media.meta["decoder"]] = decoders.get(media.meta["decoder"], 0) + 1
                            n_frames += len(media.frames)
                    media = cache[key]
                    if media.error is not None:
                        rejected.append(_reject(row, rec, "path", media.error))
                    else:
                        t0 = time.process_time()
                        writer.write(_row(rec, media))
                        writing += time.process_time() - t0
                        kept += 1
                    refcount[key] -= 1
                    if refcount[key] == 0:
                        del cache[key]
                    bar.update(1)
                bar.close()
                t0 = time.process_time()
                writer.finalize()

        from datasets import Dataset

        features = dataset_features()
        ds = (Dataset.from_file(str(arrow_tmp)) if kept  # an empty Arrow file cannot be opened
              else Dataset.from_dict({k: [] for k in features}, features=features))
        ds_dir = staging / "dataset"
        ds.save_to_disk(str(ds_dir), num_shards=None if kept else 1)  # one (empty) shard, still loadable
        del ds
        arrow_tmp.unlink()
        for item in ds_dir.iterdir():
            item.rename(staging / item.name)
        ds_dir.rmdir()

        rejected.sort(key=lambda r: r["row"])
        elapsed = time.perf_counter() - started
        manifest = {
            "format": FORMAT,
            # ref: relative to this dataset, so a copied tree refers to itself; file: where it was
            "annotations": {"file": os.path.abspath(annotations), "ref": relative_ref(annotations, out),
                            "sha256": sha256_file(annotations)},
            "media_root": os.path.abspath(media_root),
            "media_root_ref": relative_ref(media_root, out),
            "options": opts.to_dict(),
            "counts": {
                "rows": len(loaded.records) + len(loaded.errors),
                "kept": kept,
                "rejected": len(rejected),
                "media_files": len(ordered),
                "frames": n_frames,
            },
            "decoders": decoders,
            "rejected": rejected,
            "media": dict(sorted(media_hashes.items())),
            "fingerprint": fingerprint(loaded, media_hashes, opts),
            # hashes of the written dataset files, so an audit can tell if they changed
            "files": sha256_tree(staging),
            "elapsed_s": round(elapsed, 3),
            "frames_per_second": round(n_frames / elapsed, 1) if elapsed > 0 else None,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        cpu["write"] = writing + time.process_time() - t0
    return ExtractResult(path=out, manifest=FrameManifest(manifest), cpu_seconds=cpu)


def fingerprint(
    loaded: LoadedAnnotations, media_hashes: dict[str, str], opts: FrameOptions
) -> str:
    """Content hash of a build's inputs: annotation rows, media bytes and options.

    Independent of file locations and JSON formatting, so the same inputs anywhere give
    the same fingerprint, and any changed row, media byte or option gives another.
    """
    return sha256_json(
        {
            "format": FORMAT,
            "records": [r.to_dict() for r in loaded.records],
            "rejected_rows": [(e.row, e.field, e.message) for e in loaded.errors],
            "media": dict(sorted(media_hashes.items())),
            "options": opts.to_dict(),
        }
    )


def verify_frame_dataset(path: str | os.PathLike[str]) -> list[str]:
    """Re-hash a frame dataset's files against its manifest; returns the problems found."""
    path = Path(path)
    manifest = read_frame_manifest(path)
    problems = []
    current = sha256_tree(path, exclude=(MANIFEST,))
    for rel, digest in manifest.files.items():
        if rel not in current:
            problems.append(f"{path / rel}: missing")
        elif current[rel] != digest:
            problems.append(f"{path / rel}: content changed since the dataset was built")
    for rel in sorted(set(current) - set(manifest.files)):
        problems.append(f"{path / rel}: not part of the dataset as built")
    return problems


def read_frame_manifest(path: str | os.PathLike[str]) -> FrameManifest:
    """The manifest of a frame dataset directory, checked complete and of a known format."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{path} is not a complete frame dataset (no {MANIFEST})")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ValueError(f"{manifest_path}: unknown format {found!r}")
    return FrameManifest(manifest)


def load_frame_dataset(path: str | os.PathLike[str], open_dataset: bool = True) -> tuple[Any, FrameManifest]:
    """Open a frame dataset built by `extract_dataset`; returns (dataset, manifest)."""
    from datasets import load_from_disk

    manifest = read_frame_manifest(path)
    return (load_from_disk(str(path)) if open_dataset else None), manifest


def frames_array(row: dict[str, Any]) -> np.ndarray:
    """A dataset row's frames as a [T, H, W, 3] uint8 array."""
    return decode_frames(row["frames"])


def encoded_frames(dataset: Any) -> Any:
    """The dataset's ``frames`` column alone, as Arrow: `read_frames` takes rows from it.

    Row access then converts no other column and builds no PIL images. A view, not a
    cast: casting would write a cache file into the dataset's folder (and change its
    content hash) or copy every frame into memory.
    """
    return dataset.select_columns(["frames"]).with_format("arrow")


def read_frames(encoded: Any, index: int) -> np.ndarray:
    """Row `index` of an `encoded_frames` view as [T, H, W, 3] uint8 (= frames_array(ds[index]))."""
    frames = encoded[index].column(0)[0].values  # the row's list of {bytes, path} structs
    stored = frames.field("bytes").to_pylist()
    if any(data is None for data in stored):  # stored by path: datasets' Image feature opens it
        stored = encoded.with_format(None)[index]["frames"]
    return decode_frames(stored)


def decode_frames(frames: Sequence[Any]) -> np.ndarray:
    """Frames (PIL images, stored PNG/JPEG bytes, or {"bytes": ...} dicts) as [T, H, W, 3] uint8.

    Pixel for pixel what PIL's ``convert("RGB")`` gives for each frame. The PNGs `_encode`
    writes (8-bit RGB, only IHDR/IDAT/IEND) of one size are inflated and unfiltered by
    PIL's own PNG decoder straight into one [T*H, W] image: no Image.open (format probing,
    chunk parsing), no per-frame image or copy. That is most of a small frame's cost.
    """
    encoded = [f["bytes"] if isinstance(f, dict) else f for f in frames]
    plain = [None if isinstance(f, Image.Image) else _plain_png(f) for f in encoded]
    first = plain[0] if plain else None
    if first is not None and all(p is not None and p[0] == first[0] for p in plain):
        stacked = _decode_plain_pngs([p[1] for p in plain if p is not None], first[0])
        if stacked is not None:
            return stacked
    return np.stack([_decode_one(f) for f in encoded])


def _decode_one(frame: Image.Image | bytes) -> np.ndarray:
    if isinstance(frame, Image.Image):
        return np.asarray(frame.convert("RGB"))
    with Image.open(io.BytesIO(frame)) as img:
        # as datasets' Image feature decodes a stored frame (EXIF orientation applied)
        if img.getexif().get(ExifTags.Base.Orientation) is not None:
            return np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
        return np.asarray(img.convert("RGB"))


def _decode_plain_pngs(idats: list[bytes], size: tuple[int, int]) -> np.ndarray | None:
    """Decode same-size plain RGB PNGs (their IDAT data) into one array; None if any is bad
    (the general path then decodes them and raises PIL's own error)."""
    width, height = size
    canvas = Image.new("RGB", (width, height * len(idats)))
    for k, idat in enumerate(idats):
        # what ImageFile.load does for a PNG tile, aimed at frame k's rows of the canvas
        decoder = Image._getdecoder("RGB", "zip", ("RGB",))
        try:
            decoder.setimage(canvas.im, (0, k * height, width, (k + 1) * height))
            done, error = decoder.decode(idat)
        finally:
            decoder.cleanup()
        if done >= 0 or error < 0:  # ran out of data, or a zlib / filter error
            return None
    # a copy (not asarray's read-only view of the image): callers get a writable array, as
    # np.stack gives on the general path and torch.from_numpy expects
    return np.array(canvas).reshape(len(idats), height, width, 3)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# IHDR fields after width and height: bit depth 8, colour type 2 (RGB), deflate,
# adaptive filtering, not interlaced
_RGB8 = bytes((8, 2, 0, 0, 0))


def _plain_png(data: bytes) -> tuple[tuple[int, int], bytes] | None:
    """((width, height), concatenated IDAT data) of a PNG holding only IHDR/IDAT/IEND and
    8-bit RGB pixels; None for any other file (decoded the general way)."""
    if not data.startswith(_PNG_SIGNATURE):
        return None
    pos, size, idat = 8, None, []
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        if len(body) != length:
            return None
        if kind == b"IHDR":
            if length != 13 or body[8:] != _RGB8:
                return None
            size = (int.from_bytes(body[0:4], "big"), int.from_bytes(body[4:8], "big"))
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            return (size, b"".join(idat)) if size is not None and idat else None
        else:
            return None
        pos += 12 + length
    return None


def _reject(row: int, rec: Record, field: str, reason: str) -> dict[str, Any]:
    return {"row": row, "problem_id": rec.problem_id, "field": field, "path": rec.path, "reason": reason}


def _row(rec: Record, media: _Media) -> dict[str, Any]:
    assert media.frames is not None and media.meta is not None
    return {
        **rec.to_dict(),
        "frames": [{"bytes": b, "path": None} for b in media.frames],
        **media.meta,
        "media_sha256": media.sha256,
    }


def _process_media(task: tuple[tuple[str, str], str, FrameOptions]) -> _Media:
    """Worker: hash and decode one media file, encode its frames. Never raises on bad media."""
    key, path, opts = task
    seconds: dict[str, float] = {}
    t0 = time.process_time()
    try:
        sha = sha256_file(path)
    except OSError as exc:
        return _Media(key, None, None, None, f"{path}: cannot read ({exc})")
    t1 = time.process_time()
    seconds["hash"] = t1 - t0
    try:
        if key[1] == "image":
            decoded = load_image(path, opts)
            seconds["image"] = time.process_time() - t1
        else:
            decoded = decode_video(path, opts, timings=seconds)
        t2 = time.process_time()
        frames = _encode(decoded.frames, opts)
        seconds["encode"] = time.process_time() - t2
    except (DecodeError, ValueError) as exc:
        return _Media(key, sha, None, None, str(exc), _rejected(seconds, t1))
    except Exception as exc:  # noqa: BLE001 - whatever one file does, it costs its rows only
        return _Media(key, sha, None, None, f"{path}: cannot decode ({type(exc).__name__}: {exc})",
                      _rejected(seconds, t1))
    return _Media(key, sha, frames, _meta(decoded), None, seconds)


def _rejected(seconds: dict[str, float], since: float) -> dict[str, float]:
    """A failed file's steps after hashing, counted as one: "rejected"."""
    return {"hash": seconds["hash"], "rejected": time.process_time() - since}


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _meta(d: DecodedVideo) -> dict[str, Any]:
    return {
        "fps": d.fps,
        "num_source_frames": d.num_source_frames,
        "frame_indices": d.frame_indices,
        "timestamps": d.timestamps,
        "decoder": d.decoder,
        "height": int(d.frames.shape[1]),
        "width": int(d.frames.shape[2]),
    }


def _encode(frames: np.ndarray, opts: FrameOptions) -> list[bytes]:
    out = []
    for frame in frames:
        buf = io.BytesIO()
        img = Image.fromarray(frame)
        if opts.frame_format == "png":
            img.save(buf, format="PNG", compress_level=1)
        else:
            img.save(buf, format="JPEG", quality=opts.jpeg_quality)
        out.append(buf.getvalue())
    return out


# Imported once by the forkserver, so that each worker it forks starts with them loaded.
_PRELOAD = ["__main__", "vlmrl.data.extract", "decord", "av"]


def _started_worker() -> None:
    """Runs in a new pool process: nothing to do, its start is the point."""


class _OrderedMap(Iterator[_Media]):
    """Map in ``workers`` processes, this one included, yielding in input order.

    ``workers - 1`` pool processes take items, largest ``costs`` first among the next
    ``lookahead`` not yet yielded (so one big file does not finish alone at the end),
    each with a short queue while that stays within the pool's share of the costs left.
    This process works on items too instead of waiting for the pool: the one it must
    yield next when no process has started it, otherwise the smallest waiting one (so it
    is soon back to keep the pool fed). The pool is started by a helper thread (a first
    start boots the forkserver, which imports decord and PyAV: about half a second) and
    takes items once it runs; until then this process works through them in order. The
    results held for in-order yielding stay within the lookahead. A context manager:
    leaving it cancels what has not started and waits for the pool to stop.
    """

    def __init__(
        self,
        fn: Callable[[Any], _Media],
        items: list[Any],
        workers: int | None,
        costs: Sequence[float] | None = None,
    ) -> None:
        workers = workers if workers is not None else (os.cpu_count() or 1)
        self._fn, self._items = fn, items
        self._costs = list(costs) if costs is not None else [0] * len(items)
        self._lookahead = max(32, 8 * workers)
        self._workers, self._processes = workers, workers - 1
        self._next = 0  # the next item to yield
        self._started = [False] * len(items)
        self._unstarted_cost = sum(self._costs)
        self._futures: dict[int, Future[_Media]] = {}
        self._done: dict[int, _Media] = {}
        self._pool: ProcessPoolExecutor | None = None
        self._ready = threading.Event()  # set when the pool runs, or failed to start
        self._start_error: BaseException | None = None
        self._starter: threading.Thread | None = None
        if workers > 1 and len(items) > 1:
            self._starter = threading.Thread(target=self._start_pool, args=(workers - 1,),
                                             name="vlmrl-extract-pool-start", daemon=True)
            self._starter.start()

    def _start_pool(self, processes: int) -> None:
        try:
            # forkserver: safe when the caller has threads (Dagster, tqdm monitors), cheap
            # after its start.
            ctx = multiprocessing.get_context("forkserver")
            # added to what the caller may have asked for; no effect once the forkserver runs
            asked = getattr(multiprocessing.forkserver._forkserver, "_preload_modules", ["__main__"])
            ctx.set_forkserver_preload(list(dict.fromkeys([*asked, *_PRELOAD])))
            self._pool = ProcessPoolExecutor(max_workers=processes, mp_context=ctx)
            self._pool.submit(_started_worker).result()
        except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread instead
            self._start_error = exc
        finally:
            self._ready.set()

    def __enter__(self) -> _OrderedMap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._starter is not None:
            self._starter.join()
            self._starter = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def _waiting(self, pick: Callable[..., int]) -> int | None:
        first = self._next
        window = [k for k in range(first, min(len(self._items), first + self._lookahead))
                  if not self._started[k]]
        return pick(window, key=lambda k: self._costs[k]) if window else None

    def _feed(self) -> None:
        if not self._ready.is_set():
            return
        if self._start_error is not None:
            raise RuntimeError("the extraction worker pool did not start") from self._start_error
        assert self._pool is not None
        while True:
            live = [j for j, f in self._futures.items() if not f.done()]
            if len(live) >= 4 * self._processes:
                return
            k = self._waiting(max)
            if k is None:
                return
            if len(live) >= self._processes:
                # Every pool process has an item; queue more (so none waits for this one to
                # come back) only within the pool's share of what is left, else the pool's
                # queue is the end of the build while this process has nothing to do.
                in_pool = sum(self._costs[j] for j in live)
                share = self._processes * (self._unstarted_cost + in_pool) / self._workers
                if in_pool + self._costs[k] > share:
                    return
            self._mark_started(k)
            self._futures[k] = self._pool.submit(self._fn, self._items[k])

    def _mark_started(self, k: int) -> None:
        self._started[k] = True
        self._unstarted_cost -= self._costs[k]

    def _run_here(self, k: int) -> None:
        self._mark_started(k)
        self._done[k] = self._fn(self._items[k])

    def __next__(self) -> _Media:
        i = self._next
        if i >= len(self._items):
            raise StopIteration
        result = self._fn(self._items[i]) if self._starter is None and self._pool is None else self._get(i)
        self._next += 1
        return result

    def _get(self, i: int) -> _Media:
        while True:
            self._feed()
            if i in self._done:
                return self._done.pop(i)
            if i not in self._futures:  # nobody has started it: this process does
                self._run_here(i)
                continue
            if self._futures[i].done():
                return self._futures.pop(i).result()
            k = self._waiting(min)
            if k is None:
                return self._futures.pop(i).result()
            self._run_here(k)


__all__ = [
    "ExtractResult",
    "FORMAT",
    "MANIFEST",
    "dataset_features",
    "decode_frames",
    "encoded_frames",
    "extract_dataset",
    "fingerprint",
    "frames_array",
    "load_frame_dataset",
    "read_frames",
    "verify_frame_dataset",
]
