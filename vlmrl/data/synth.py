"""Synthetic temporal video QA and image grounding data: the embedded default's data.

Real MP4 files (H.264 via PyAV) and PNG images plus annotation files in the Video-R1
record format. The video families need temporal order to answer:

- ``motion`` (multiple choice): which way a shape moves. Any single frame, or the set of
  frames in shuffled order, is ambiguous.
- ``order`` (multiple choice): which of two objects appears first; each is shown for a
  while and then disappears, so no single frame tells. The four options have distinct
  colours (two are shown, two are distractors).
- ``count`` (numerical): how many times a light flashes; shuffling frames merges or
  splits flashes.
- ``position`` (regression): where a moving ball ends, as a percentage of the width;
  the end is only known when the direction is.

Image families exercise the Visual-RFT / VLM-R1 rewards: ``classify`` (classification),
``ground`` (grounding, pixel box), ``detect`` (detection, 0..1000 boxes) and ``ovd``.

The SFT split's chains of thought are short and regular (one sentence, the visual fact
first), so a tiny model can learn them. Timing is designed around the default sampling
(2 fps): every video is 4 s at 8 fps, and each event lasts a whole 0.5 s slot, so each
sampled frame shows one slot.
Everything is deterministic for a seed (x264 runs single-threaded in bit-exact mode).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

SIZE = 112  # frame and image side in pixels (a multiple of 28: no resize needed)
VIDEO_FPS = 8
SLOTS = 8  # 0.5 s slots in a 4 s video
FRAMES_PER_SLOT = 4
N_FRAMES = SLOTS * FRAMES_PER_SLOT
# Placement tries per scene before it starts again: a scene whose first objects leave no
# room for the rest otherwise loops forever (seen: sizes 8/8/8, video_fraction 0.5, seed 0);
# far above what a placeable scene needs, so every scene that finished before is unchanged.
MAX_SCENE_TRIES = 10_000
OBJ = 28  # object size in pixels (14 after a 2x downscale to 56: one vision patch)

COLORS = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 240),
    "yellow": (240, 220, 40),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUND = (16, 16, 16)
LETTERS = "ABCD"
DIRECTIONS = ("left", "right", "up", "down")

VIDEO_FAMILIES = ("motion", "order", "count", "position")
IMAGE_FAMILIES = ("classify", "ground", "detect", "ovd")
TEMPORAL_FAMILIES = VIDEO_FAMILIES


@dataclass
class SynthSizes:
    """Samples per split. The RL split is larger than the CoT SFT split, as in Video-R1."""

    sft: int = 64
    rl: int = 256
    bench: int = 128
    video_fraction: float = 0.8
    # Relative weights of the video families in the SFT split (None: equal shares). A tiny
    # model learns to read the frames sooner when the multiple-choice families dominate.
    sft_video_weights: dict[str, float] | None = None
    rl_video_weights: dict[str, float] | None = None  # the same for the RL split
    # An imperfect teacher: this share of the SFT split's multiple-choice video rows (motion,
    # order) carries a wrong but self-consistent chain of thought and answer.
    sft_error_rate: float = 0.0
    # A temporal shortcut in the RL split only: with this probability a multiple-choice video
    # row's colours give its answer away (motion: the colour names the direction; order: the
    # red object appears first), a cue any single frame (or the question text) shows. The SFT
    # and benchmark splits keep independent colours, so a model that learnt the cue is at
    # chance on the benchmark, one that reads the order of the frames is not.
    rl_shortcut: float = 0.0
    # A biased teacher: motion rows whose direction is a key here are taught, with probability
    # `sft_confusion_rate`, as moving the mapped way (e.g. {up: down, down: up}). A model that
    # imitates it prefers the wrong word for those videos while still seeing the difference;
    # RL with a verifiable reward on the RL split can correct that (issue 12's headroom).
    sft_confusions: dict[str, str] = field(default_factory=dict)
    sft_confusion_rate: float = 0.0

    def __post_init__(self) -> None:
        bad = {k: v for k, v in self.sft_confusions.items()
               if k not in DIRECTIONS or v not in DIRECTIONS or k == v}
        if bad:
            raise ValueError(f"sft_confusions: {bad} must map a direction to another direction")
        for name in ("sft_error_rate", "rl_shortcut", "video_fraction", "sft_confusion_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("sft_video_weights", "rl_video_weights"):
            weights = getattr(self, name)
            if weights is None:
                continue
            unknown = sorted(set(weights) - set(VIDEO_FAMILIES))
            if unknown:
                raise ValueError(f"{name}: unknown video families {unknown} ({', '.join(VIDEO_FAMILIES)})")
            if any(w < 0 for w in weights.values()) or not sum(weights.values()) > 0:
                raise ValueError(f"{name}: weights must be >= 0 with a positive sum")

    @classmethod
    def parse(cls, text: str) -> SynthSizes:
        """Parse ``"sft=64,rl=256,bench=128"`` (any subset)."""
        sizes = cls()
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, _, value = part.partition("=")
            if name not in ("sft", "rl", "bench", "video_fraction"):
                raise ValueError(f"unknown split {name!r} in sizes {text!r} (sft, rl, bench, video_fraction)")
            setattr(sizes, name, float(value) if name == "video_fraction" else int(value))
        return sizes


@dataclass
class Sample:
    """What a family generator returns before it is written to disk."""

    family: str
    problem_type: str
    question: str
    answer: str
    cot: str
    options: list[str] = field(default_factory=list)
    video: np.ndarray | None = None  # [T, H, W, 3] uint8
    image: np.ndarray | None = None  # [H, W, 3] uint8


# ---------------------------------------------------------------- drawing


def _canvas(n: int | None = None) -> np.ndarray:
    shape = (SIZE, SIZE, 3) if n is None else (n, SIZE, SIZE, 3)
    out = np.empty(shape, dtype=np.uint8)
    out[...] = BACKGROUND
    return out


def _mask(shape: str, cx: float, cy: float, size: int = OBJ) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    r = size / 2
    if shape == "circle":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
    if shape == "square":
        return (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r)
    # triangle pointing up: inside when below the two slanted edges and above the base
    top = cy - r
    return (yy >= top) & (yy <= cy + r) & (np.abs(xx - cx) <= (yy - top) / 2)


def _draw(img: np.ndarray, shape: str, color: str, cx: float, cy: float) -> None:
    img[_mask(shape, cx, cy)] = COLORS[color]


def _box(cx: float, cy: float, size: int = OBJ) -> list[int]:
    r = size / 2
    return [int(round(cx - r)), int(round(cy - r)), int(round(cx + r)), int(round(cy + r))]


def _mc(rng: np.random.Generator, correct: str, distractors: list[str]) -> tuple[list[str], str]:
    choices = [correct, *distractors]
    rng.shuffle(choices)
    options = [f"{LETTERS[i]}. {c}" for i, c in enumerate(choices)]
    return options, LETTERS[choices.index(correct)]


def _obj(rng: np.random.Generator) -> tuple[str, str]:
    return str(rng.choice(list(COLORS))), str(rng.choice(SHAPES))


# ---------------------------------------------------------------- video families


SHORTCUT_COLOR = dict(zip(DIRECTIONS, COLORS, strict=True))  # left: red, right: green, ...
_FROM_TO = {"right": ("left", "right"), "left": ("right", "left"), "down": ("top", "bottom"), "up": ("bottom", "top")}


def _motion_cot(direction: str) -> str:
    start, end = _FROM_TO[direction]
    return f"<think>It moves {direction}, from the {start} to the {end}.</think>"


def motion(rng: np.random.Generator, shortcut: bool = False) -> Sample:
    color, shape = _obj(rng)
    direction = str(rng.choice(DIRECTIONS))
    if shortcut:
        color = SHORTCUT_COLOR[direction]
    lo, hi = OBJ, SIZE - OBJ
    fixed = float(rng.uniform(lo, hi))
    start, end = (lo, hi) if direction in ("right", "down") else (hi, lo)
    video = _canvas(N_FRAMES)
    for t in range(N_FRAMES):
        pos = start + (end - start) * t / (N_FRAMES - 1)
        cx, cy = (pos, fixed) if direction in ("left", "right") else (fixed, pos)
        _draw(video[t], shape, color, cx, cy)
    options, letter = _mc(rng, direction, [d for d in DIRECTIONS if d != direction])
    cot = _motion_cot(direction)
    return Sample("motion", "multiple choice", f"In which direction does the {color} {shape} move?",
                  letter, cot, options, video=video)


def order(rng: np.random.Generator, shortcut: bool = False) -> Sample:
    # four objects of distinct colours (random shapes): two are shown, two are distractors
    objs = [(str(c), str(rng.choice(SHAPES))) for c in rng.permutation(list(COLORS))]
    if shortcut:  # the red object is the one that appears first
        objs.sort(key=lambda o: o[0] != "red")
    first, second = objs[0], objs[1]
    # first object in slots [a, a+d), second later; never both on screen
    d1, d2 = int(rng.integers(2, 4)), int(rng.integers(2, 4))
    a = int(rng.integers(0, SLOTS - d1 - d2 + 1))
    b = int(rng.integers(a + d1, SLOTS - d2 + 1))
    video = _canvas(N_FRAMES)
    pos = [(float(rng.uniform(OBJ, SIZE - OBJ)), float(rng.uniform(OBJ, SIZE - OBJ))) for _ in range(2)]
    for t in range(N_FRAMES):
        slot = t // FRAMES_PER_SLOT
        if a <= slot < a + d1:
            _draw(video[t], first[1], first[0], *pos[0])
        if b <= slot < b + d2:
            _draw(video[t], second[1], second[0], *pos[1])
    name = [f"the {c} {s}" for c, s in objs]
    options, letter = _mc(rng, name[0], name[1:])
    cot = f"<think>First {name[0]} appears, then {name[1]}.</think>"
    return Sample("order", "multiple choice", "Which object appears first in the video?",
                  letter, cot, options, video=video)


def count(rng: np.random.Generator) -> Sample:
    n = int(rng.integers(1, 5))
    # choose n on-slots with at least one off-slot between consecutive flashes
    while True:
        on = sorted(rng.choice(SLOTS, size=n, replace=False).tolist())
        if all(b - a >= 2 for a, b in zip(on, on[1:], strict=False)):
            break
    color = str(rng.choice(list(COLORS)))
    video = _canvas(N_FRAMES)
    for t in range(N_FRAMES):
        if t // FRAMES_PER_SLOT in on:
            _draw(video[t], "square", color, SIZE / 2, SIZE / 2)
    pattern = " ".join("on" if s in on else "off" for s in range(SLOTS))
    cot = f"<think>The light is {pattern}: {n} flash{'es' if n > 1 else ''}.</think>"
    return Sample("count", "numerical", f"How many times does the {color} light flash?",
                  str(n), cot, video=video)


def position(rng: np.random.Generator) -> Sample:
    color, shape = _obj(rng)
    lo, hi = OBJ, SIZE - OBJ
    start = float(rng.uniform(lo, hi))
    end = float(rng.uniform(lo, hi))
    while abs(end - start) < SIZE / 4:
        end = float(rng.uniform(lo, hi))
    cy = float(rng.uniform(lo, hi))
    video = _canvas(N_FRAMES)
    for t in range(N_FRAMES):
        _draw(video[t], shape, color, start + (end - start) * t / (N_FRAMES - 1), cy)
    pct = int(round(100 * end / SIZE))
    direction = "right" if end > start else "left"
    cot = f"<think>It starts at {int(round(100 * start / SIZE))} and moves {direction} to {pct}.</think>"
    return Sample(
        "position", "regression",
        f"The {color} {shape} moves horizontally. Where is it at the end of the video, as a "
        "percentage of the frame width (0 = left edge, 100 = right edge)?",
        str(pct), cot, video=video,
    )


# ---------------------------------------------------------------- image families


def _scene(rng: np.random.Generator, n: int) -> tuple[np.ndarray, list[tuple[str, str, list[int]]]]:
    """n non-overlapping objects on a canvas; returns the image and (color, shape, box)."""
    img = _canvas()
    objs: list[tuple[str, str, list[int]]] = []
    tries = 0
    while len(objs) < n:
        if tries == MAX_SCENE_TRIES:  # the objects placed so far leave no room: start afresh
            img, objs, tries = _canvas(), [], 0
        tries += 1
        cx, cy = (float(v) for v in rng.uniform(OBJ, SIZE - OBJ, size=2))
        box = _box(cx, cy)
        if any(not (box[2] + 4 < b[0] or b[2] + 4 < box[0] or box[3] + 4 < b[1] or b[3] + 4 < box[1]) for *_, b in objs):
            continue
        color, shape = _obj(rng)
        _draw(img, shape, color, cx, cy)
        objs.append((color, shape, box))
    return img, objs


def classify(rng: np.random.Generator) -> Sample:
    img, [(color, shape, _)] = _scene(rng, 1)
    cot = f"<think>There is one {color} object. Its outline is a {shape}.</think>"
    return Sample("classify", "classification", "What shape is the object in the image?",
                  shape, cot, image=img)


def ground(rng: np.random.Generator) -> Sample:
    img, objs = _scene(rng, int(rng.integers(2, 4)))
    unique = [o for o in objs if sum(1 for p in objs if (p[0], p[1]) == (o[0], o[1])) == 1]
    color, shape, box = unique[0] if unique else objs[0]
    cot = f"<think>The {color} {shape} spans x from {box[0]} to {box[2]} and y from {box[1]} to {box[3]}.</think>"
    return Sample("ground", "grounding",
                  f"Output the bounding box of the {color} {shape} as [x1, y1, x2, y2] in pixels.",
                  json.dumps(box), cot, image=img)


def _norm(box: list[int]) -> list[int]:
    return [int(round(v * 1000 / SIZE)) for v in box]


def detect(rng: np.random.Generator) -> Sample:
    img, objs = _scene(rng, int(rng.integers(1, 4)))
    target = str(rng.choice(SHAPES))
    boxes = [_norm(b) for _, s, b in objs if s == target]
    answer = json.dumps([{"Position": b, "Confidence": 1.0} for b in boxes]) if boxes else "No Objects"
    cot = f"<think>I look for every {target}. I find {len(boxes)}.</think>"
    return Sample("detect", "detection",
                  f"Detect every {target} in the image. Give boxes as integers in 0..1000 with a confidence.",
                  answer, cot, image=img)


def ovd(rng: np.random.Generator) -> Sample:
    img, objs = _scene(rng, int(rng.integers(1, 4)))
    present = sorted({s for _, s, _ in objs})
    absent = [s for s in SHAPES if s not in present]
    asked = present + absent[: int(rng.integers(0, len(absent) + 1))]
    rng.shuffle(asked)
    items = [{"bbox_2d": b, "label": s} for _, s, b in objs]
    answer = "```json\n" + json.dumps(items) + "\n```"
    cot = f"<think>I look for {', '.join(asked)}. I find {len(items)} objects.</think>"
    return Sample("ovd", "ovd",
                  f"Locate every object of these categories: {', '.join(asked)}. "
                  "Answer a JSON list of {\"bbox_2d\": [x1, y1, x2, y2], \"label\": name}.",
                  answer, cot, image=img)


FAMILIES: dict[str, Callable[[np.random.Generator], Sample]] = {
    f.__name__: f for f in (motion, order, count, position, classify, ground, detect, ovd)
}


SHORTCUT_FAMILIES = ("motion", "order")  # the multiple-choice video families


def _wrong_teacher(sample: Sample, rng: np.random.Generator, taught: str | None = None) -> Sample:
    """The same sample with another option's chain of thought and answer (self-consistent):
    the option `taught` names, or a random wrong one."""
    correct = LETTERS.index(sample.answer)
    names = [o.split(". ", 1)[1] for o in sample.options]
    if taught is not None:
        letter = LETTERS[names.index(taught)]
    else:
        letter = LETTERS[int(rng.choice([i for i in range(len(sample.options)) if i != correct]))]
    wrong = sample.options[LETTERS.index(letter)].split(". ", 1)[1]
    right = sample.options[correct].split(". ", 1)[1]
    if sample.family == "motion":
        cot = _motion_cot(wrong)
    else:  # order: the wrong object first, the right one second
        cot = f"<think>First {wrong} appears, then {right}.</think>"
    return Sample(sample.family, sample.problem_type, sample.question, letter, cot,
                  sample.options, video=sample.video)


# ---------------------------------------------------------------- writing


def write_video(frames: np.ndarray, path: str | os.PathLike[str], fps: int = VIDEO_FPS) -> None:
    """Write [T, H, W, 3] uint8 frames as H.264 MP4, bit-exact for equal input."""
    import av

    with av.open(str(path), mode="w", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast", "threads": "1", "tune": "fastdecode"}
        stream.codec_context.flags |= av.codec.context.Flags.bitexact
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _family_plan(rng: np.random.Generator, n: int, video_fraction: float,
                 video_weights: dict[str, float] | None = None) -> list[str]:
    n_video = int(round(n * video_fraction))
    if video_weights is None:
        plan = [VIDEO_FAMILIES[i % len(VIDEO_FAMILIES)] for i in range(n_video)]
    else:
        # largest-remainder shares of n_video, in VIDEO_FAMILIES order
        w = np.array([float(video_weights.get(f, 0.0)) for f in VIDEO_FAMILIES])
        exact = n_video * w / w.sum()
        counts = np.floor(exact).astype(int)
        for j in np.argsort(-(exact - counts), kind="stable")[: n_video - int(counts.sum())]:
            counts[j] += 1
        plan = [f for f, c in zip(VIDEO_FAMILIES, counts, strict=True) for _ in range(int(c))]
    plan += [IMAGE_FAMILIES[i % len(IMAGE_FAMILIES)] for i in range(n - n_video)]
    rng.shuffle(plan)
    return plan


def generate(out: str | os.PathLike[str], seed: int = 0, sizes: SynthSizes | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Write media and ``{sft,rl,bench}.json`` annotation files under ``out``.

    Returns a summary (paths and per-split, per-family counts). SFT rows carry the CoT
    ``process``; RL and benchmark rows do not. Splits never share media.
    """
    sizes = sizes or SynthSizes()
    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"root": str(out), "seed": seed, "splits": {}}
    total = sizes.sft + sizes.rl + sizes.bench
    bar = tqdm(total=total, desc="synthesize", unit="sample", disable=not progress)
    for offset, split in enumerate(("sft", "rl", "bench")):
        n = getattr(sizes, split)
        rng = np.random.default_rng([seed, offset])
        rows = []
        counts: dict[str, int] = {}
        weights = {"sft": sizes.sft_video_weights, "rl": sizes.rl_video_weights}.get(split)
        flips: dict[str, int] = {}
        for i, family in enumerate(_family_plan(rng, n, sizes.video_fraction, weights)):
            if family in SHORTCUT_FAMILIES:
                # draws only when a knob is on: the default data stay what they were
                shortcut = split == "rl" and sizes.rl_shortcut > 0 and rng.random() < sizes.rl_shortcut
                sample = FAMILIES[family](rng, shortcut=shortcut)
                truth = sample.options[LETTERS.index(sample.answer)].split(". ", 1)[1]
                if split != "sft":
                    pass
                elif truth in sizes.sft_confusions and family == "motion":
                    if rng.random() < sizes.sft_confusion_rate:
                        sample = _wrong_teacher(sample, rng, sizes.sft_confusions[truth])
                        flips["confused"] = flips.get("confused", 0) + 1
                elif sizes.sft_error_rate > 0 and rng.random() < sizes.sft_error_rate:
                    sample = _wrong_teacher(sample, rng)
                    flips[family] = flips.get(family, 0) + 1
            else:
                sample = FAMILIES[family](rng)
            pid = f"{split}-{family}-{i:05d}"
            if sample.video is not None:
                rel = f"videos/{pid}.mp4"
                write_video(sample.video, out / rel)
            else:
                rel = f"images/{pid}.png"
                Image.fromarray(sample.image).save(out / rel, format="PNG")
            row = {
                "problem_id": pid,
                "problem": sample.question,
                "data_type": "video" if sample.video is not None else "image",
                "problem_type": sample.problem_type,
                "options": sample.options,
                "solution": f"<answer>{sample.answer}</answer>",
                "path": rel,
                "data_source": f"synthetic/{family}",
            }
            if split == "sft":
                row["process"] = sample.cot
            rows.append(row)
            counts[family] = counts.get(family, 0) + 1
            bar.update(1)
        ann = out / f"{split}.json"
        ann.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
        summary["splits"][split] = {"annotations": str(ann), "samples": n, "families": counts,
                                    "wrong_teacher_rows": flips}
    bar.close()
    (out / "synth_summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return summary
