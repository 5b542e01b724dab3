"""The training-time frame read (`encoded_frames` + `read_frames`, `decode_frames`) gives,
byte for byte, the arrays the datasets-decoded row gave, on synthetic and real data."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
from datasets import Image as ImageFeature
from PIL import Image

import vlmrl.data.extract as extract_mod
from vlmrl.data.extract import (
    decode_frames,
    encoded_frames,
    extract_dataset,
    frames_array,
    load_frame_dataset,
    read_frames,
    verify_frame_dataset,
)
from vlmrl.data.frames import FrameOptions
from vlmrl.recipes import load_recipe


def previous_frames_array(row) -> np.ndarray:
    """The read path as it was: datasets' PIL images, each converted to RGB."""
    return np.stack([np.asarray(img.convert("RGB")) for img in row["frames"]])


def datasets_decoded(data: bytes) -> np.ndarray:
    """How datasets' Image feature (what training rows go through) decodes one frame."""
    return np.asarray(ImageFeature().decode_example({"bytes": data, "path": None}).convert("RGB"))


def assert_identical(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype == np.uint8 and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


def check_every_row(path: Path) -> int:
    ds, _ = load_frame_dataset(path)
    encoded = encoded_frames(ds)
    for i in range(len(ds)):
        row = ds[i]
        old = previous_frames_array(row)
        assert_identical(read_frames(encoded, i), old)
        assert_identical(frames_array(row), old)
    return len(ds)


def png(array: np.ndarray, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", **save)
    return buf.getvalue()


def test_demo_rl_split_reads_identically(synth_dir, tmp_path):
    opts = load_recipe("tiny-cpu").frames.train  # the demo's 8 frames of 56x56 PNG
    extract_dataset(synth_dir / "rl.json", synth_dir, tmp_path / "rl", opts, workers=1, progress=False)
    ds, _ = load_frame_dataset(tmp_path / "rl")
    stored = [f["bytes"] for f in encoded_frames(ds)[0].column(0).to_pylist()[0]]
    assert all(extract_mod._plain_png(b) is not None for b in stored)  # the fast path is taken
    assert check_every_row(tmp_path / "rl") == len(json.loads((synth_dir / "rl.json").read_text()))


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_real_fixtures_read_identically(fixtures_dir, tmp_path, fmt):
    ann = tmp_path / "fixtures.json"
    ann.write_text(json.dumps([
        {"problem_id": p.name, "problem": "?", "data_type": "video", "problem_type": "free-form",
         "solution": "<answer>x</answer>", "path": p.name} for p in sorted(fixtures_dir.iterdir())
    ]))
    out = tmp_path / fmt
    res = extract_dataset(ann, fixtures_dir, out, FrameOptions(frame_format=fmt), workers=1,
                          progress=False)
    assert check_every_row(out) == res.kept >= 8


def test_view_follows_selection_and_writes_nothing(synth_dir, tmp_path):
    opts = load_recipe("tiny-cpu").frames.train
    out = tmp_path / "rl"
    extract_dataset(synth_dir / "rl.json", synth_dir, out, opts, workers=1, progress=False)
    before = sorted(p.name for p in out.iterdir())
    ds, _ = load_frame_dataset(out)
    picked = encoded_frames(ds.select([5, 2]))
    assert_identical(read_frames(picked, 0), previous_frames_array(ds[5]))
    assert_identical(read_frames(picked, 1), previous_frames_array(ds[2]))
    assert sorted(p.name for p in out.iterdir()) == before  # no cache file in the dataset
    assert verify_frame_dataset(out) == []


def test_other_encodings_take_the_general_path_identically():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    jpeg = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # EXIF orientation: datasets rotates such a frame
    Image.fromarray(rgb).save(jpeg, format="JPEG", exif=exif)
    frames = [
        png(rgb),  # plain: fast path
        png(rgb, compress_level=9),
        png(np.dstack([rgb, rgb[..., :1]])),  # RGBA
        png(rgb[..., 0]),  # grey
        png(rgb, pnginfo=_text_chunk()),  # an ancillary chunk
        png_palette(rgb),
        png(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)),  # another size
        jpeg.getvalue(),
    ]
    for data in frames:
        assert_identical(decode_frames([data])[0], datasets_decoded(data))
        assert_identical(decode_frames([{"bytes": data, "path": None}])[0], datasets_decoded(data))
    same_size = frames[:6]  # plain and other PNGs of one size in one row
    assert_identical(decode_frames(same_size), np.stack([datasets_decoded(f) for f in same_size]))
    pil = [Image.open(io.BytesIO(f)) for f in frames[:2]]
    assert_identical(decode_frames(pil), np.stack([datasets_decoded(f) for f in frames[:2]]))


def _text_chunk():
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("comment", "x")
    return info


def png_palette(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).convert("P").save(buf, format="PNG")
    return buf.getvalue()


def test_damaged_png_is_an_error_not_garbage():
    rgb = np.full((8, 8, 3), 200, dtype=np.uint8)
    good = png(rgb)
    start = good.index(b"IDAT") + 4
    truncated = good[: start + 10] + good[-12:]  # IDAT cut short, chunk lengths no longer add up
    flipped = bytearray(good)
    flipped[start + 5] ^= 0xFF  # the deflate stream broken, lengths intact
    for bad in (truncated, bytes(flipped)):
        with pytest.raises((OSError, SyntaxError, ValueError)):
            datasets_decoded(bad)
        with pytest.raises((OSError, SyntaxError, ValueError)):
            decode_frames([good, bad])
