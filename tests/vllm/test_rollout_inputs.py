"""The vLLM-free half of vlmrl.rollout: inputs, id checks, gaps, the HF recomputation.

Runs in either environment (no vLLM needed).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vlmrl.models.multimodal import chat_media, encode_texts, mm_token_types, render_chats
from vlmrl.rollout import (
    PromptIdsMismatch,
    build_rollout_prompts,
    check_prompt_ids,
    filter_top_k_top_p,
    group_repeats,
    hf_completion_logprobs,
    logprob_gap,
    rollout_prompts,
    vision_token_ids,
)
from vlmrl.train.prompts import build_prompt, sampled_fps


def _video_row() -> dict:
    frames = []
    for t in range(4):
        frame = np.zeros((56, 56, 3), dtype=np.uint8)
        frame[20:32, 4 + t * 12 : 16 + t * 12] = 255
        frames.append(Image.fromarray(frame))
    return {"problem_id": "v", "problem": "Which way does the square move?", "data_type": "video",
            "problem_type": "multiple choice", "options": ["A. left", "B. right"],
            "solution": "<answer>B</answer>", "frames": frames,
            "timestamps": [0.0, 0.25, 0.5, 0.75]}


def _image_row() -> dict:
    frame = np.zeros((56, 56, 3), dtype=np.uint8)
    frame[..., 0] = 200
    return {"problem_id": "i", "problem": "What color is the image?", "data_type": "image",
            "problem_type": "multiple choice", "options": ["A. red", "B. green"],
            "solution": "<answer>A</answer>", "frames": [Image.fromarray(frame)],
            "timestamps": [0.0]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from vlmrl.models import TinyModelSpec, build_tiny_model
    from vlmrl.train.prompts import tokenizer_corpus

    rows = [_video_row(), _image_row()]
    out = build_tiny_model(tmp_path_factory.mktemp("tiny") / "model",
                           tokenizer_corpus(rows) * 3, TinyModelSpec(vocab_size=512, initializer_range=0.08), seed=0)
    model = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32).eval()
    return model, AutoProcessor.from_pretrained(out)


def test_check_prompt_ids_names_the_first_difference():
    check_prompt_ids([1, 2, 3], [1, 2, 3])
    with pytest.raises(PromptIdsMismatch, match="position 1 \\(vLLM 9, processor 2"):
        check_prompt_ids([1, 9, 3], [1, 2, 3], index=4)
    with pytest.raises(PromptIdsMismatch, match="position 3 \\(vLLM <end>, processor 7"):
        check_prompt_ids([1, 2, 3], [1, 2, 3, 7])


def test_logprob_gap():
    gap = logprob_gap([[-1.0, -2.0], [-0.5]], [[-1.5, -2.0], [-0.25]])
    assert gap.max_abs == pytest.approx(0.5) and gap.mean_abs == pytest.approx(0.25)
    assert gap.num_tokens == 3 and gap.within(0.5) and not gap.within(0.4)
    with pytest.raises(ValueError, match="completion 0"):
        logprob_gap([[-1.0]], [[-1.0, -2.0]])


def test_pixel_inputs_keep_the_frame_contract(tiny):
    model, processor = tiny
    row = _video_row()
    video, image = build_rollout_prompts(processor, [build_prompt(row), build_prompt(_image_row())])
    assert video.text.count("<|video_pad|>") == 1 and image.text.count("<|image_pad|>") == 1
    (frames, meta), = video.multi_modal_data["video"]
    assert np.array_equal(frames, np.stack([np.asarray(f) for f in row["frames"]]))
    assert meta["fps"] == sampled_fps(row) == 4.0
    assert meta["frames_indices"] == [0, 1, 2, 3] and meta["do_sample_frames"] is False
    # the processor's ids hold the expanded placeholders: grid / merge^2 per item
    grid = video.visual["video_grid_thw"][0]
    pad = processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert video.hf_prompt_ids.count(pad) == int(grid.prod()) // 4
    assert video.visual["second_per_grid_ts"].tolist() == [0.5]  # 2 frames per patch at 4 fps
    assert len(image.multi_modal_data["image"]) == 1


def test_embedding_inputs_are_the_hf_towers_output(tiny):
    model, processor = tiny
    video, image = build_rollout_prompts(
        processor, [build_prompt(_video_row()), build_prompt(_image_row())],
        vision="embeddings", model=model,
    )
    data = video.multi_modal_data["video"]
    with torch.no_grad():
        expected = model.model.get_video_features(
            video.visual["pixel_values_videos"], video.visual["video_grid_thw"]
        ).pooler_output[0]
    assert torch.equal(data["video_embeds"], expected)
    assert data["video_embeds"].shape == (int(data["video_grid_thw"].prod()) // 4,
                                          model.config.text_config.hidden_size)
    assert torch.equal(data["second_per_grid_ts"], video.visual["second_per_grid_ts"])
    assert set(image.multi_modal_data["image"]) == {"image_embeds", "image_grid_thw"}
    with pytest.raises(ValueError, match="needs the HF model"):
        build_rollout_prompts(processor, [build_prompt(_video_row())], vision="embeddings")


def test_recomputed_logprobs_equal_generates_own(tiny):
    # The recomputation (one forward over prompt + completion) against the scores of
    # `generate` itself (KV cache, step by step) for sampled video and image completions.
    model, processor = tiny
    banned = vision_token_ids(model.config)
    for row in (_video_row(), _image_row()):
        prompt = build_rollout_prompts(processor, [build_prompt(row)])[0]
        ids = torch.tensor([prompt.hf_prompt_ids])
        types = mm_token_types(ids, model.config.image_token_id, model.config.video_token_id)
        inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                  "mm_token_type_ids": types, **prompt.visual}
        with torch.no_grad():
            out = model.generate(**inputs, do_sample=True, max_new_tokens=12, temperature=0.7,
                                 suppress_tokens=banned, output_logits=True,
                                 return_dict_in_generate=True, min_new_tokens=12)
        completion = out.sequences[0, ids.size(1):].tolist()
        logits = torch.stack(out.logits, 1)[0] / 0.7
        logits[:, banned] = float("-inf")
        expected = logits.log_softmax(-1).gather(-1, torch.tensor(completion)[:, None])[:, 0]
        got = hf_completion_logprobs(model, prompt, [completion], temperature=0.7,
                                     suppress_token_ids=banned)[0]
        assert logprob_gap([got], [expected.tolist()]).max_abs < 1e-4
    with pytest.raises(ValueError, match="vision token"):
        hf_completion_logprobs(model, prompt, [[banned[0]]])


def test_repeated_rows_share_one_prompt_and_become_vllms_n(tiny):
    """GRPO's G copies of a prompt: one RolloutPrompt (embeddings computed once), one request
    with n = G. A row with the same question but other frames (T-GRPO's shuffled order) is a
    prompt of its own, and so is a repeat that is not adjacent."""
    model, processor = tiny
    row = _video_row()
    shuffled = dict(row, frames=row["frames"][::-1])
    convs = [build_prompt(r) for r in (row, row, row, shuffled, shuffled, _image_row(), row)]
    texts = render_chats(processor, convs)
    media = [chat_media(c) for c in convs]
    encoded = encode_texts(processor, texts, media)
    prompts = rollout_prompts(texts, media, encoded, vision="embeddings", model=model,
                              share_repeats=True)
    assert prompts[0] is prompts[1] is prompts[2] and prompts[3] is prompts[4]
    assert prompts[2] is not prompts[3] and prompts[6] is not prompts[0]
    assert not torch.equal(prompts[0].multi_modal_data["video"]["video_embeds"],
                           prompts[3].multi_modal_data["video"]["video_embeds"])
    unique, counts = group_repeats(prompts)
    assert counts == [3, 2, 1, 1] and unique == [prompts[0], prompts[3], prompts[5], prompts[6]]
    # without sharing every row is its own prompt, with equal contents
    separate = rollout_prompts(texts, media, encoded, vision="embeddings", model=model)
    assert len({id(p) for p in separate}) == len(convs)
    assert torch.equal(separate[1].multi_modal_data["video"]["video_embeds"],
                       prompts[1].multi_modal_data["video"]["video_embeds"])
    assert group_repeats(separate)[1] == [1] * len(convs)


@pytest.mark.parametrize(("top_k", "top_p"), [(0, 0.5), (0, 0.95), (7, 1.0), (7, 0.9), (0, 1.0)])
def test_top_k_top_p_filter_is_the_samplers(top_k, top_p):
    """The gate's filter keeps exactly the tokens transformers' (and vLLM's) sampler keeps."""
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    logits = torch.randn(6, 300, generator=torch.Generator().manual_seed(top_k)) * 3
    expected = logits.clone()
    if top_k:
        expected = TopKLogitsWarper(top_k)(None, expected)
    if top_p < 1:
        expected = TopPLogitsWarper(top_p)(None, expected)
    kept = filter_top_k_top_p(logits, top_k, top_p)
    assert torch.equal(kept.isfinite(), expected.isfinite())
    assert torch.equal(kept[kept.isfinite()], logits[kept.isfinite()])  # kept values untouched
    if top_p < 1:  # what is kept holds at least top_p of the (top-k) distribution's mass
        before = filter_top_k_top_p(logits, top_k, 1.0).softmax(-1)
        assert (before * kept.isfinite()).sum(-1).min() >= top_p - 1e-6
