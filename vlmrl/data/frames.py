"""Frame sampling, smart resize and decoding of videos and images.

Sampling follows Qwen2.5-VL / Video-R1 (METHODS.md section 2): ``fps`` frames per second
of video, clamped to ``[min_frames, max_frames]``, the count rounded down to a multiple
of the temporal patch (2), indices uniformly spaced over the whole video. An exact
``num_frames`` overrides the fps rule.

Short videos: when a video has fewer frames than the count asked for, indices repeat
(uniform spacing with rounding, e.g. a 1-frame video gives ``[0, 0, 0, 0]``) so every
sample has the same temporal layout; ``DecodedVideo.repeated`` says so.

Decoding uses decord (batched ``get_batch``), falling back to PyAV for containers decord
cannot open (e.g. AV1 in Matroska). Both return RGB uint8 arrays of shape [T, H, W, 3].

A video must decode to the frames it claims to be. Its clock is checked: a frame rate
that is not finite and positive (repaired from the packets' timestamps when those are
sound), or frames that share a presentation time (zero durations, a zero timescale) are
rejected. When decord returns one picture for different frames, as it does when it cannot
seek, PyAV's in-order decode decides: its frames are used if they differ (decord seeks
wrongly in some HEVC files), a still scene is kept, and an unconfirmed one is rejected.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

PATCH_FACTOR = 28  # Qwen2.5-VL: 14-pixel patches merged 2x2
TEMPORAL_FACTOR = 2  # Qwen2.5-VL: two frames per temporal patch
MAX_ASPECT_RATIO = 200
TRUNCATION_TOLERANCE = 0.9  # readable frames below this share of the declared count: truncated


class DecodeError(RuntimeError):
    """A media file that cannot be decoded; the message names the file and the reasons."""


@dataclass(frozen=True)
class FrameOptions:
    """How frames are sampled and sized. Defaults are Video-R1's training settings.

    fps / min_frames / max_frames: the fps sampling rule; num_frames: exact count instead.
    min_pixels / max_pixels: per-frame pixel bounds for smart resize; total_pixels: an
    optional budget for the whole clip (the per-frame maximum shrinks to fit it).
    image_min_pixels / image_max_pixels: the bounds for image samples.
    frame_format / jpeg_quality: how frames are stored in the dataset.
    """

    fps: float = 2.0
    min_frames: int = 4
    max_frames: int = 16
    num_frames: int | None = None
    min_pixels: int = 4 * 28 * 28
    max_pixels: int = 128 * 28 * 28
    total_pixels: int | None = None
    image_min_pixels: int = 4 * 28 * 28
    image_max_pixels: int = 256 * 28 * 28
    frame_format: str = "jpeg"
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        checks = [
            (self.fps > 0, "fps must be > 0"),
            (self.min_frames >= 1, "min_frames must be >= 1"),
            (self.max_frames >= self.min_frames, "max_frames must be >= min_frames"),
            (self.num_frames is None or self.num_frames >= 1, "num_frames must be >= 1"),
            (0 < self.min_pixels <= self.max_pixels, "need 0 < min_pixels <= max_pixels"),
            (
                0 < self.image_min_pixels <= self.image_max_pixels,
                "need 0 < image_min_pixels <= image_max_pixels",
            ),
            (self.total_pixels is None or self.total_pixels > 0, "total_pixels must be > 0"),
            (self.frame_format in ("jpeg", "png"), "frame_format must be 'jpeg' or 'png'"),
            (1 <= self.jpeg_quality <= 100, "jpeg_quality must be in 1..100"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"FrameOptions: {message} (got {self})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def frame_count(total_frames: int, video_fps: float, opts: FrameOptions) -> int:
    """How many frames to sample from a video of ``total_frames`` at ``video_fps``."""
    if opts.num_frames is not None:
        return opts.num_frames
    lo = math.ceil(opts.min_frames / TEMPORAL_FACTOR) * TEMPORAL_FACTOR
    hi = max(lo, (opts.max_frames // TEMPORAL_FACTOR) * TEMPORAL_FACTOR)
    duration = total_frames / video_fps if video_fps > 0 else 0.0
    wanted = duration * opts.fps
    n = min(max(wanted, lo), hi)
    return max(lo, int(n // TEMPORAL_FACTOR) * TEMPORAL_FACTOR)


def sample_indices(total_frames: int, video_fps: float, opts: FrameOptions) -> list[int]:
    """Uniformly spaced frame indices over ``[0, total_frames - 1]``."""
    if total_frames < 1:
        raise ValueError("a video needs at least one frame")
    n = frame_count(total_frames, video_fps, opts)
    return [int(i) for i in np.linspace(0, total_frames - 1, n).round().astype(int)]


def smart_resize(
    height: int,
    width: int,
    min_pixels: int,
    max_pixels: int,
    factor: int = PATCH_FACTOR,
) -> tuple[int, int]:
    """Qwen2.5-VL's resize rule: multiples of ``factor``, aspect kept, pixels in bounds."""
    if height < 1 or width < 1:
        raise ValueError(f"invalid frame size {height}x{width}")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(
            f"aspect ratio of {height}x{width} exceeds {MAX_ASPECT_RATIO}: cannot resize sanely"
        )
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    # The cap is hard (it bounds memory): a side clamped up to one patch, or a minimum
    # so close to the cap that no grid fits between, is settled by shrinking the long side.
    while h_bar * w_bar > max_pixels and max(h_bar, w_bar) > factor:
        if h_bar >= w_bar:
            h_bar -= factor
        else:
            w_bar -= factor
    return h_bar, w_bar


def video_max_pixels(opts: FrameOptions, n_frames: int) -> int:
    """Per-frame pixel ceiling, shrunk so the whole clip fits ``total_pixels``."""
    if opts.total_pixels is None:
        return opts.max_pixels
    return max(opts.min_pixels, min(opts.max_pixels, opts.total_pixels // max(1, n_frames)))


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize [T, H, W, 3] uint8 frames with bicubic filtering (PIL, as Qwen's utils do)."""
    if frames.shape[1] == height and frames.shape[2] == width:
        return frames
    out = np.empty((frames.shape[0], height, width, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):
        img = Image.fromarray(frame).resize((width, height), Image.Resampling.BICUBIC)
        out[i] = np.asarray(img)
    return out


@dataclass
class DecodedVideo:
    """Sampled frames and where they came from."""

    frames: np.ndarray  # [T, H, W, 3] uint8, already resized
    fps: float  # source frame rate
    num_source_frames: int
    frame_indices: list[int]
    timestamps: list[float]  # seconds from the first frame
    decoder: str  # "decord" | "pyav" | "pil"
    source_size: tuple[int, int]  # (height, width) before resize

    @property
    def repeated(self) -> bool:
        return len(set(self.frame_indices)) < len(self.frame_indices)


def decode_video(
    path: str | Path, opts: FrameOptions, *, timings: dict[str, float] | None = None
) -> DecodedVideo:
    """Decode the sampled frames of a video, decord first, PyAV when decord fails.

    ``timings``, when given, gets CPU seconds added by step: "probe" (the container's
    declared frame count), "decode" (decord, or PyAV when decord fails, with the checks),
    "confirm" (PyAV's in-order decode of pictures decord repeats) and "resize".
    """
    started = time.process_time()
    path = Path(path)
    if not path.is_file():
        raise DecodeError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DecodeError(f"{path}: empty file (0 bytes)")
    reasons = []
    expected = _declared_frames(path)
    probed = time.process_time()
    confirming = None  # when PyAV's in-order decode started to confirm decord's pictures
    chosen = None
    chosen_repeats = 0
    unconfirmed = False  # the chosen decode repeats pictures and no second decoder checked it
    for name, decoder in (("decord", _decode_decord), ("pyav", _decode_pyav)):
        try:
            if chosen is None:
                frames, fps, total, indices, stamps = decoder(path, opts)
            else:  # confirming decord's repeated pictures: PyAV's RGB only if it may repeat fewer
                confirming = time.process_time()
                frames, fps, total, indices, stamps = _decode_pyav(path, opts, beat=chosen_repeats)
            _check_decoded(frames, fps, indices, stamps)
        except Exception as exc:  # each backend has its own exception zoo
            reasons.append(f"{name}: {type(exc).__name__}: {_first_line(exc)}")
            continue
        truncated = bool(expected) and total < TRUNCATION_TOLERANCE * expected - 2
        if chosen is None:
            if truncated:
                # A truncated file still decodes its first part; sampling that would silently
                # answer questions about a video we do not have.
                raise DecodeError(
                    f"{path}: truncated video: the container declares about {expected} frames "
                    f"but only {total} can be read at {fps:.4g} fps (a cut file, or a broken "
                    "clock such as a zero timescale)"
                )
            chosen = (name, frames, fps, total, indices, stamps)
            # One picture for different frames: a still scene, or a decoder that could not
            # seek and "recovered" by repeating a frame. PyAV decodes in order, so it tells.
            chosen_repeats = _repeated_pictures(frames, indices)
            unconfirmed = name == "decord" and chosen_repeats > 0
            if not unconfirmed:
                break
            continue
        if truncated:
            reasons.append(f"{name}: reads only {total} of about {expected} frames")
            continue
        unconfirmed = False
        # frames is None: PyAV's own pictures repeat at least as often (no RGB was made)
        if frames is not None and _repeated_pictures(frames, indices) < chosen_repeats:
            chosen = (name, frames, fps, total, indices, stamps)
    if chosen is None:
        raise DecodeError(f"{path}: cannot decode video ({'; '.join(reasons)})")
    if unconfirmed:
        raise DecodeError(
            f"{path}: decord returns the same picture for different frames "
            f"({chosen_repeats} of {len(chosen[4])} sampled, at "
            f"{chosen[2]:.4g} fps), as decoders do when they cannot seek; the in-order decode "
            f"that would tell a still scene failed ({'; '.join(reasons)})"
        )
    name, frames, fps, total, indices, stamps = chosen
    src_h, src_w = frames.shape[1], frames.shape[2]
    h, w = smart_resize(src_h, src_w, opts.min_pixels, video_max_pixels(opts, len(indices)))
    decoded = time.process_time()
    resized = resize_frames(frames, h, w)
    if timings is not None:
        mid = decoded if confirming is None else confirming
        for step, spent in (("probe", probed - started), ("decode", mid - probed),
                            ("confirm", decoded - mid), ("resize", time.process_time() - decoded)):
            timings[step] = timings.get(step, 0.0) + spent
    return DecodedVideo(
        frames=resized,
        fps=float(fps),
        num_source_frames=int(total),
        frame_indices=indices,
        timestamps=stamps,
        decoder=name,
        source_size=(src_h, src_w),
    )


def _check_decoded(
    frames: np.ndarray | None, fps: float, indices: list[int], stamps: list[float]
) -> None:
    """Refuse a decode whose shape or clock is wrong: frames that cannot be placed in time
    would be stored as a video that is not the one on disk. (None: PyAV's confirming decode
    made no RGB; its frames are of one size, so they would stack as [T, H, W, 3].)"""
    if frames is not None and (
        frames.ndim != 4 or frames.shape[0] != len(indices) or frames.shape[-1] != 3
    ):
        raise DecodeError(f"unexpected frame array shape {frames.shape}")
    if not (math.isfinite(fps) and fps > 0):
        raise DecodeError(f"frame rate {fps} is not a positive finite number")
    if not all(math.isfinite(t) for t in stamps):
        raise DecodeError(f"non-finite frame timestamps {stamps[:8]}")
    placed = sorted(set(zip(indices, stamps, strict=True)))
    for (i0, t0), (i1, t1) in zip(placed, placed[1:], strict=False):
        if i1 != i0 and t1 <= t0:
            raise DecodeError(
                f"frames {i0} and {i1} have timestamps {t0} s and {t1} s: the container's frame "
                "durations are zero or broken, so the frames cannot be placed in time"
            )


def _repeated_pictures(frames: np.ndarray, indices: list[int]) -> int:
    """How many sampled frames are pixel-identical to the frame of a different source index.

    Frames are compared in full only when a coarse grid of their pixels matches, so
    different pictures (the common case) cost a few thousand bytes each, not a hash of
    every pixel.
    """
    seen: dict[bytes, list[tuple[np.ndarray, int]]] = {}  # grid -> (picture, first index)
    repeats = 0
    for frame, index in zip(frames, indices, strict=True):
        grid = frame[:: max(1, frame.shape[0] // 16), :: max(1, frame.shape[1] // 16)].tobytes()
        pictures = seen.setdefault(grid, [])
        for picture, first in pictures:
            if np.array_equal(picture, frame):
                repeats += first != index
                break
        else:
            pictures.append((frame, index))
    return repeats


def _raw_repeats(frames: list[Any], indices: list[int]) -> int:
    """`_repeated_pictures` on decoded PyAV frames before any RGB conversion.

    Frames with the same decoded planes (and format, size, colour properties) convert to
    the same RGB, and the same source index is the same frame, so this is never more than
    the count on the RGB frames: when it is not below a bound, neither is that one.
    """
    first_index: dict[tuple[Any, ...], int] = {}
    repeats = 0
    for frame, index in zip(frames, indices, strict=True):
        digest = hashlib.blake2b(digest_size=16)
        for plane in frame.planes:
            digest.update(plane)
        key = (frame.format.name, frame.width, frame.height, getattr(frame, "colorspace", None),
               getattr(frame, "color_range", None), digest.digest())
        if first_index.setdefault(key, index) != index:
            repeats += 1
    return repeats


# Share of a video's frames that may share a presentation time with another. Above it the
# clock is broken (zero frame durations, a zero timescale) and the video is refused; below
# it (a muxing glitch in a long recording) only the sampled frames must have distinct,
# increasing times, which `_check_decoded` requires of every clip.
MAX_SHARED_TIMES = 0.01


def _check_clock(times: list[float], total: int) -> None:
    """Frames need their own presentation times: frames that share one cannot be placed in
    time, and decoders that seek by time hand back some other frame for them."""
    shared = total - len(set(times))
    if shared > MAX_SHARED_TIMES * total:
        raise DecodeError(
            f"{shared} of {total} frames share a presentation time with another (zero frame "
            "durations): the frames cannot be placed in time"
        )


def _fps_from_pts(pts: list[int], time_base: Any, total: int) -> float:
    """Frame rate from the packets' own timestamps, when they are sound: one per packet,
    all distinct. Otherwise the video cannot be placed in time and is refused."""
    ticks = sorted(set(pts))
    if time_base is None or not time_base > 0 or len(ticks) < 2 or len(ticks) != total:
        raise DecodeError(
            f"no usable frame rate: the header gives none and the packet timestamps are not "
            f"sound ({len(ticks)} distinct timestamps for {total} frames)"
        )
    return (len(ticks) - 1) / float((ticks[-1] - ticks[0]) * time_base)


def load_image(path: str | Path, opts: FrameOptions) -> DecodedVideo:
    """Load an image as a one-frame clip, RGB, smart-resized with the image bounds."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            rgb = img.convert("RGB")
    except Exception as exc:
        raise DecodeError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from exc
    h, w = smart_resize(rgb.height, rgb.width, opts.image_min_pixels, opts.image_max_pixels)
    frame = np.asarray(rgb.resize((w, h), Image.Resampling.BICUBIC) if (h, w) != (rgb.height, rgb.width) else rgb)
    return DecodedVideo(
        frames=frame[None].copy(),
        fps=0.0,
        num_source_frames=1,
        frame_indices=[0],
        timestamps=[0.0],
        decoder="pil",
        source_size=(rgb.height, rgb.width),
    )


def _declared_frames(path: Path) -> int | None:
    """Frame count the container header declares (count, or duration x rate), if any."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.best("video")
            if stream is None:
                return None
            if stream.frames:
                return int(stream.frames)
            rate = stream.average_rate or stream.guessed_rate
            if stream.duration and rate:
                return int(round(float(stream.duration * stream.time_base * rate)))
            if container.duration and rate:
                return int(round(container.duration / 1e6 * float(rate)))
    except Exception:  # unreadable headers are reported by the decoders themselves
        return None
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else repr(exc)


def _decode_decord(path: Path, opts: FrameOptions):
    import decord

    reader = decord.VideoReader(str(path), num_threads=1)
    total = len(reader)
    if total < 1:
        raise DecodeError("no frames")
    fps = float(reader.get_avg_fps())
    _check_clock(reader.get_frame_timestamp(list(range(total)))[:, 0].tolist(), total)
    indices = sample_indices(total, fps, opts)
    frames = reader.get_batch(indices).asnumpy()
    starts = reader.get_frame_timestamp(indices)[:, 0]
    stamps = [round(float(t - starts.min()) if len(starts) else 0.0, 6) for t in starts]
    return frames, fps, total, indices, stamps


def _decode_pyav(path: Path, opts: FrameOptions, beat: int | None = None):
    """In-order decode of the sampled frames. With ``beat`` (the repeated pictures of a
    decode to confirm), frames is None when PyAV's own repeat at least as often: its RGB
    would not be used, so it is not made."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.best("video")
        if stream is None:
            raise DecodeError("no video stream")
        # Count frames by demuxing packets (no decoding): container metadata is often 0.
        pts = [p.pts for p in container.demux(stream) if p.size > 0]
        total = len(pts)
        if total < 1:
            raise DecodeError("no video packets")
        known = [t for t in pts if t is not None]  # AVI and raw streams may carry none
        if len(known) == total:
            _check_clock(known, total)
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 0.0
        if not (math.isfinite(fps) and fps > 0):  # repair from the real timestamps
            fps = _fps_from_pts(known, stream.time_base, total)
        indices = sample_indices(total, fps, opts)
        wanted: dict[int, list[int]] = {}
        for pos, idx in enumerate(indices):
            wanted.setdefault(idx, []).append(pos)
        container.seek(0, stream=stream)
        kept: list[Any] = [None] * len(indices)  # the decoded frames, converted once below
        rgb: dict[int, np.ndarray] = {}  # by id() of a kept frame
        stamps = [0.0] * len(indices)
        first_time = None
        for i, frame in enumerate(container.decode(stream)):
            if first_time is None:
                first_time = frame.time or 0.0
            if i in wanted:
                if i == indices[0]:  # a frame RGB cannot be made from fails here, as it did
                    rgb[id(frame)] = frame.to_ndarray(format="rgb24")
                for pos in wanted[i]:
                    kept[pos] = frame
                    stamps[pos] = round(float((frame.time or 0.0) - first_time), 6)
            if i >= indices[-1]:
                break
        missing = [indices[p] for p, f in enumerate(kept) if f is None]
        if missing:
            raise DecodeError(f"stream ended before frames {missing[:5]} (counted {total} packets)")
        one_size = len({(f.width, f.height) for f in kept}) == 1  # else the stack below fails
        if beat is not None and one_size and _raw_repeats(kept, indices) >= beat:
            return None, fps, total, indices, stamps
        for f in kept:
            if id(f) not in rgb:
                rgb[id(f)] = f.to_ndarray(format="rgb24")
        frames = [rgb[id(f)] for f in kept]
    return np.stack(frames), fps, total, indices, stamps
