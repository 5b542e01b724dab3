import math
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlmrl.data.frames import (
    DecodeError,
    FrameOptions,
    decode_video,
    load_image,
    sample_indices,
    smart_resize,
    video_max_pixels,
)

D = FrameOptions()


@pytest.mark.parametrize(
    "total, fps, opts, expected",
    [
        # video1.mp4: 491 frames at 22.29 fps = 22 s -> 44 wanted -> clamped to 16
        (491, 22.29, D, [0, 33, 65, 98, 131, 163, 196, 229, 261, 294, 327, 359, 392, 425, 457, 490]),
        # 1 s at 30 fps -> 2 wanted -> raised to min 4
        (30, 30.0, D, [0, 10, 19, 29]),
        # 10 frames at 10 fps
        (10, 10.0, D, [0, 3, 6, 9]),
        # a single-frame video repeats its frame (documented policy)
        (1, 25.0, D, [0, 0, 0, 0]),
        # 7.5 s at 10 fps -> 15 wanted -> rounded down to an even 14
        (75, 10.0, D, [round(x) for x in np.linspace(0, 74, 14)]),
        # exact count overrides fps (and is not forced even)
        (100, 10.0, FrameOptions(num_frames=5), [0, 25, 50, 74, 99]),
        # odd min_frames is rounded up to the temporal patch
        (30, 30.0, FrameOptions(min_frames=3, max_frames=8), [0, 10, 19, 29]),
    ],
)
def test_sample_indices_hand_computed(total, fps, opts, expected):
    assert sample_indices(total, fps, opts) == expected


@pytest.mark.parametrize(
    "h, w, lo, hi, expected",
    [
        # 360x640 -> beta = sqrt(230400/100352) = 1.515; floor(237.6/28)*28 = 224, floor(422.4/28)*28 = 420
        (360, 640, 3136, 128 * 28 * 28, (224, 420)),
        (64, 64, 3136, 100352, (56, 56)),  # rounds to 56x56 which meets the minimum exactly
        (10, 10, 3136, 100352, (56, 56)),  # upscaled: beta = 5.6, ceil(56/28)*28
        (80, 121, 3136, 100352, (84, 112)),  # odd width: round(80/28)=3, round(121/28)=4
        (1080, 1920, 3136, 256 * 28 * 28, (336, 588)),  # beta = 3.214: 336.0/28 = 12, 597.3/28 -> 21
    ],
)
def test_smart_resize_hand_computed(h, w, lo, hi, expected):
    assert smart_resize(h, w, lo, hi) == expected


@settings(max_examples=200, deadline=None)
@given(st.integers(28, 4000), st.integers(28, 4000), st.integers(1, 64), st.integers(1, 512))
def test_smart_resize_bounds(h, w, lo_tokens, extra_tokens):
    if max(h, w) / min(h, w) > 50:
        return
    lo, hi = lo_tokens * 784, (2 * lo_tokens + extra_tokens) * 784  # a band a grid fits in
    rh, rw = smart_resize(h, w, lo, hi)
    assert rh % 28 == 0 and rw % 28 == 0
    assert rh * rw <= hi
    assert rh * rw >= min(lo, 784)
    # aspect kept to within one patch of rounding on each side, when the cap leaves room
    ratio = max(h, w) / min(h, w)
    if hi >= 784 * (math.ceil(ratio) + 1) ** 2:
        assert abs(rh / rw - h / w) <= (h / w) * (28 / min(rh, rw) + 28 / min(rh, rw)) + 1e-9


def test_aspect_ratio_limit():
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 5000, 3136, 100352)


def test_total_pixels_budget_shrinks_frames():
    opts = FrameOptions(max_pixels=100352, total_pixels=16 * 3136 * 2)
    assert video_max_pixels(opts, 16) == 6272
    assert video_max_pixels(opts, 1000) == opts.min_pixels  # never below the minimum
    assert video_max_pixels(FrameOptions(), 16) == FrameOptions().max_pixels


@pytest.mark.parametrize(
    "bad",
    [dict(fps=0), dict(min_frames=5, max_frames=4), dict(min_pixels=0), dict(frame_format="gif")],
)
def test_frame_options_validated(bad):
    with pytest.raises(ValueError, match="FrameOptions"):
        FrameOptions(**bad)


# Every real fixture either yields frames or is rejected naming the file.
FIXTURE_EXPECT = {
    "video1.mp4": ("decord", 491, 16),
    "nasa_13013.mp4": ("decord", 390, 16),
    "nasa_13013_rotated.mp4": ("decord", 17, 4),
    # decord's seeking returns wrong frames here (6 and 9 come back as one picture, neither
    # of them right); the in-order PyAV decode tells them apart and is used instead
    "h265_video.mp4": ("pyav", 10, 4),
    "av1_video.mkv": ("pyav", 125, 10),  # decord cannot open it; the fallback can
    "testsrc2_vp9.webm": ("decord", 30, 4),
    "testsrc2_mpeg4.avi": ("decord", 30, 4),
    "testsrc2_mpeg4.mp4": ("decord", 1, 4),
    "testsrc2_odd_width_mpeg2.mp4": ("decord", 10, 4),
    "test_non_zero_start.mp4": ("decord", 12, 4),
    "h264_10bits.mp4": ("decord", 30, 4),
    "discard_first_keyframe.mp4": ("decord", 30, 4),
}


def test_fixture_table_covers_every_file(fixtures_dir):
    assert sorted(p.name for p in fixtures_dir.iterdir()) == sorted(FIXTURE_EXPECT)


@pytest.mark.parametrize("name", sorted(FIXTURE_EXPECT))
def test_every_fixture_decodes(fixtures_dir, name):
    decoder, total, n = FIXTURE_EXPECT[name]
    v = decode_video(fixtures_dir / name, D)
    assert v.decoder == decoder
    assert v.num_source_frames == total
    assert v.frames.dtype == np.uint8 and v.frames.shape[0] == n == len(v.frame_indices)
    assert v.frames.shape[1] % 28 == 0 and v.frames.shape[2] % 28 == 0 and v.frames.shape[3] == 3
    assert v.frames.shape[1] * v.frames.shape[2] <= D.max_pixels
    assert v.frame_indices == sample_indices(total, v.fps, D)
    assert len(v.timestamps) == n and v.timestamps[0] == 0.0
    assert all(b >= a for a, b in zip(v.timestamps, v.timestamps[1:], strict=False))
    if total > 1:
        assert v.frames.std() > 1.0  # real content, not a blank buffer
        assert v.timestamps[-1] > 0


def test_rotated_fixture_is_portrait(fixtures_dir):
    v = decode_video(fixtures_dir / "nasa_13013_rotated.mp4", D)
    assert v.frames.shape[1] > v.frames.shape[2]


def test_pyav_fallback_matches_decord_timing(fixtures_dir):
    """Both back ends agree on what the fps rule samples from the same file."""
    from vlmrl.data.frames import _decode_decord, _decode_pyav

    f = fixtures_dir / "video1.mp4"
    a = _decode_decord(f, D)
    b = _decode_pyav(f, D)
    assert a[2] == b[2] and a[3] == b[3]
    assert math.isclose(a[1], b[1], rel_tol=1e-3)
    assert np.abs(a[0].astype(int) - b[0].astype(int)).mean() < 3  # same frames, codec rounding


def test_truncated_copy_rejected(fixtures_dir, tmp_path):
    for name in ("video1.mp4", "testsrc2_mpeg4.avi", "testsrc2_vp9.webm"):
        data = (fixtures_dir / name).read_bytes()
        bad = tmp_path / f"trunc_{name}"
        bad.write_bytes(data[: len(data) // 2])
        with pytest.raises(DecodeError, match=str(bad)) as info:
            decode_video(bad, D)
        assert "truncated" in str(info.value) or "cannot decode" in str(info.value)


def test_zero_byte_and_missing_rejected(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(DecodeError, match=r"empty\.mp4: empty file"):
        decode_video(empty, D)
    with pytest.raises(DecodeError, match="no such file"):
        decode_video(tmp_path / "nope.mp4", D)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x01not a video" * 100)
    with pytest.raises(DecodeError, match=r"garbage\.mp4: cannot decode video \(decord: .*; pyav: "):
        decode_video(garbage, D)


def test_image_loading(tmp_path):
    from PIL import Image

    img = np.zeros((100, 300, 4), dtype=np.uint8)
    img[..., 0] = 200
    img[..., 3] = 255
    Image.fromarray(img, "RGBA").save(tmp_path / "x.png")
    v = load_image(tmp_path / "x.png", FrameOptions(image_max_pixels=28 * 28 * 8))
    assert v.decoder == "pil" and v.frames.shape[0] == 1 and v.frames.shape[3] == 3
    assert v.frames.shape[1] * v.frames.shape[2] <= 28 * 28 * 8
    assert v.frames[0, ..., 0].mean() > 190
    shutil.copy(tmp_path / "x.png", tmp_path / "y.jpg")
    (tmp_path / "y.jpg").write_bytes(b"not an image")
    with pytest.raises(DecodeError, match=r"y\.jpg: cannot decode image"):
        load_image(tmp_path / "y.jpg", D)
