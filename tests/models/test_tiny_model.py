import hashlib
import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vlmrl.models import (
    CheckpointError,
    TinyModelSpec,
    build_tiny_model,
    encode_chats,
    load_model,
)
from vlmrl.models.tiny import REASONING_TOKENS, SPECIAL_TOKENS


def weights_hash(directory) -> str:
    tensors = load_file(os.path.join(directory, "model.safetensors"))
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].numpy().tobytes())
    return h.hexdigest()


def frames(n: int, h: int = 56, w: int = 56, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(tiny_model_dir)


def test_directory_holds_only_safetensors_and_json(tiny_model_dir):
    names = sorted(os.listdir(tiny_model_dir))
    assert "model.safetensors" in names and "config.json" in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle"))]
    # the staging directory was renamed into place, nothing left next to it
    assert os.listdir(tiny_model_dir.parent) == [tiny_model_dir.name]


def test_reload_offline_gives_qwen25vl_with_processor(tiny):
    assert type(tiny.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert type(tiny.processor).__name__ == "Qwen2_5_VLProcessor"
    n_params = sum(p.numel() for p in tiny.model.parameters())
    assert 100_000 < n_params < 2_000_000
    tok = tiny.tokenizer
    for t in SPECIAL_TOKENS + REASONING_TOKENS:
        assert len(tok(t, add_special_tokens=False)["input_ids"]) == 1, t
    text = "<think>left then right</think><answer>B</answer>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    # reasoning tags are ordinary tokens: they survive the decoding TRL uses for rewards
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert tiny.model.config.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    assert tiny.model.generation_config.eos_token_id == tok.eos_token_id


def _prompt(part):
    return [
        {
            "role": "user",
            "content": [part, {"type": "text", "text": "Which way does the square move?"}],
        }
    ]


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image", "image": Image.fromarray(frames(1)[0])},
        {"type": "video", "video": [Image.fromarray(f) for f in frames(4)]},
        {"type": "video", "video": frames(4), "fps": 2.0},
    ],
    ids=["image", "video-pil-frames", "video-uint8-array"],
)
def test_forward_and_generate_through_chat_template(tiny, part):
    inputs = tiny.processor.apply_chat_template(
        _prompt(part),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
        return_tensors="pt",
    )
    ids = inputs["input_ids"]
    if part["type"] == "video":
        grid = inputs["video_grid_thw"]
        assert grid.tolist() == [[2, 4, 4]]  # 4 frames / temporal patch 2, 56 px / 14
        n_tokens = (ids == tiny.model.config.video_token_id).sum().item()
        assert n_tokens == grid.prod().item() // 4  # 2x2 spatial merge
    else:
        n_tokens = (ids == tiny.model.config.image_token_id).sum().item()
        assert n_tokens == inputs["image_grid_thw"].prod().item() // 4
    with torch.no_grad():
        logits = tiny.model(**inputs).logits
        assert logits.shape == (1, ids.shape[1], len(tiny.tokenizer))
        assert torch.isfinite(logits).all()
        out = tiny.model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert out.shape[1] > ids.shape[1]


def test_video_frames_change_the_output(tiny):
    def logits(video):
        enc = encode_chats(tiny.processor, [_prompt({"type": "video", "video": video})])
        with torch.no_grad():
            return tiny.model(**enc.model_inputs()).logits[0, -1]

    video = frames(4)
    assert torch.allclose(logits(video), logits(video.copy()))
    assert not torch.allclose(logits(video), logits(video[::-1].copy()))


def test_same_seed_same_weights_other_seed_differs(tmp_path, tiny_texts):
    a = build_tiny_model(tmp_path / "a", tiny_texts, seed=3)
    b = build_tiny_model(tmp_path / "b", reversed(tiny_texts), seed=3)
    c = build_tiny_model(tmp_path / "c", tiny_texts, seed=4)
    assert weights_hash(a) == weights_hash(b) != weights_hash(c)
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()


def test_build_refuses_existing_target_unless_overwrite(tmp_path, tiny_texts):
    out = build_tiny_model(tmp_path / "m", tiny_texts, seed=0)
    with pytest.raises(FileExistsError):
        build_tiny_model(out, tiny_texts, seed=0)
    before = weights_hash(out)
    build_tiny_model(out, tiny_texts, seed=1, overwrite=True)
    assert weights_hash(out) != before
    assert sorted(os.listdir(tmp_path)) == ["m"]


def test_spec_sizes_and_mrope_validation(tmp_path, tiny_texts):
    spec = TinyModelSpec(
        hidden_size=96, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=1
    )
    assert sum(spec.resolved_mrope_section()) == spec.head_dim // 2
    with pytest.raises(ValueError, match="mrope_section"):
        TinyModelSpec(mrope_section=(2, 2, 2)).validate()
    out = build_tiny_model(tmp_path / "m", tiny_texts, spec=spec, seed=0)
    loaded = load_model(out)
    assert loaded.model.config.text_config.hidden_size == 96


def test_loader_refuses_directories_without_safetensors(tmp_path, tiny_model_dir):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing")
    bad = tmp_path / "pickled"
    bad.mkdir()
    (bad / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    (bad / "pytorch_model.bin").write_bytes(b"not really")
    with pytest.raises(CheckpointError, match=str(bad)) as err:
        load_model(bad)
    assert "pytorch_model.bin" in str(err.value)


def test_loader_dtype_option(tiny_model_dir):
    loaded = load_model(tiny_model_dir, dtype="bf16", attn_implementation="eager", device="cpu")
    assert next(loaded.model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        load_model(tiny_model_dir, dtype="int3")
