import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TINY_TEXTS = [
    "Which way does the square move?",
    "Options:\nA. left\nB. right",
    "<think>The square starts on the left and ends on the right.</think>",
    "<answer>B</answer>",
    "How many times does the light flash?",
    "Which object appears first? A. circle B. triangle",
] * 4


@pytest.fixture(scope="session")
def tiny_texts():
    return list(TINY_TEXTS)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from vlmrl.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", TINY_TEXTS, seed=0)
