import os

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def moving_square(direction: str, n: int = 4, size: int = 56) -> list[Image.Image]:
    """Frames of a white square moving left or right: the answer depends on frame order."""
    frames = []
    for t in range(n):
        frame = np.zeros((size, size, 3), dtype=np.uint8)
        x = 4 + t * 12 if direction == "right" else size - 16 - t * 12
        frame[20:32, x : x + 12] = 255
        frames.append(Image.fromarray(frame))
    return frames


def frame_rows() -> list[dict]:
    rows = []
    for i, direction in enumerate(["left", "right", "right", "left"]):
        letter = "A" if direction == "left" else "B"
        rows.append(
            {
                "problem_id": f"motion-{i}",
                "problem": "Which way does the square move?",
                "data_type": "video",
                "problem_type": "multiple choice",
                "options": ["A. left", "B. right"],
                "solution": f"<answer>{letter}</answer>",
                "path": f"videos/{i}.mp4",
                "data_source": "synthetic/motion",
                "process": f"<think>The square starts on one side and moves {direction}.</think>",
                "frames": moving_square(direction),
                "fps": 8.0,
                "frame_indices": [0, 4, 8, 12],
                "timestamps": [0.0, 0.5, 1.0, 1.5],
            }
        )
    for i, color in enumerate(["red", "green"]):
        frame = np.zeros((56, 56, 3), dtype=np.uint8)
        frame[..., 0 if color == "red" else 1] = 200
        rows.append(
            {
                "problem_id": f"color-{i}",
                "problem": "What color is the image?",
                "data_type": "image",
                "problem_type": "multiple choice",
                "options": ["A. red", "B. green"],
                "solution": f"<answer>{'A' if color == 'red' else 'B'}</answer>",
                "path": f"images/{i}.png",
                "data_source": "synthetic/color",
                "process": f"<think>The whole image is {color}.</think>",
                "frames": [Image.fromarray(frame)],
                "fps": 0.0,
                "frame_indices": [0],
                "timestamps": [0.0],
            }
        )
    return rows


def make_dataset(rows):
    """An in-memory frame dataset with the real schema (the columns these rows have)."""
    from datasets import Dataset, Features

    from vlmrl.data.extract import dataset_features

    schema = dataset_features()
    return Dataset.from_list(rows, features=Features({k: schema[k] for k in rows[0]}))


@pytest.fixture
def rows():
    """Fresh frame-dataset rows (4 videos, then 2 images) as plain dicts."""
    return frame_rows()


@pytest.fixture(scope="session")
def frame_dataset():
    return make_dataset(frame_rows())


@pytest.fixture(scope="session")
def tiny_rl_model_dir(tmp_path_factory, frame_dataset):
    from vlmrl.models import TinyModelSpec, build_tiny_model
    from vlmrl.train.prompts import tokenizer_corpus

    rows = [frame_dataset[i] for i in range(len(frame_dataset))]
    spec = TinyModelSpec(vocab_size=512)
    return build_tiny_model(
        tmp_path_factory.mktemp("tiny") / "model", tokenizer_corpus(rows) * 3, spec, seed=0
    )


# Stage-function tests: the tiny-cpu recipe, shortened to a few steps of each stage.
SHORT = {
    "frames": {"train": {"max_frames": 4}},
    "sft": {"max_steps": 4, "per_device_train_batch_size": 4, "logging_steps": 1,
            "save_steps": 2, "curriculum": [{"families": ["motion"], "max_steps": 2}]},
    "rl": {"max_steps": 3, "per_device_train_batch_size": 8, "max_completion_length": 8,
           "logging_steps": 1, "save_steps": 1},
}


@pytest.fixture(scope="session")
def short_recipe():
    from vlmrl.recipes import load_recipe

    return load_recipe("tiny-cpu", SHORT)


@pytest.fixture(scope="session")
def stage_frames(synth_dir, short_recipe, tmp_path_factory):
    """sft and rl frame datasets of the session's synthetic set, with the recipe's frames."""
    from vlmrl.data.extract import extract_dataset

    out = tmp_path_factory.mktemp("stage_frames")
    for split in ("sft", "rl"):
        extract_dataset(synth_dir / f"{split}.json", synth_dir, out / split,
                        short_recipe.frames.train, workers=1, progress=False)
    return {"sft": out / "sft", "rl": out / "rl"}


@pytest.fixture(scope="session")
def stage_base(short_recipe, stage_frames, tmp_path_factory):
    from vlmrl.stages.training import build_base_model

    out = tmp_path_factory.mktemp("stage_base") / "base"
    return build_base_model(short_recipe, out, [stage_frames["sft"], stage_frames["rl"]])


@pytest.fixture(scope="session")
def stage_sft(short_recipe, stage_base, stage_frames, tmp_path_factory):
    from vlmrl.stages.training import train_sft

    out = tmp_path_factory.mktemp("stage_sft") / "sft"
    return train_sft(short_recipe, stage_base, stage_frames["sft"], out)
