import pytest

from vlmrl.train.prompts import (
    PromptConfig,
    build_prompt,
    question_text,
    reasoning_hint,
    sampled_fps,
    sft_target,
    tokenizer_corpus,
)


def test_video_prompt_has_frames_rate_options_and_instructions(rows):
    video = rows[0]
    (message,) = build_prompt(video)
    assert message["role"] == "user"
    part, text = message["content"]
    assert part["type"] == "video" and part["video"] is video["frames"]
    assert part["fps"] == pytest.approx(2.0)  # 4 frames over 1.5 s, not the 8 fps source rate
    body = text["text"]
    assert body.startswith("Which way does the square move?\nOptions:\nA. left\nB. right\n")
    assert "<think>" in body and "<answer>" in body
    assert body.endswith(
        "Put only the letter of the correct option (A, B, C, ...) inside <answer> </answer>."
    )


def test_image_prompt_uses_the_single_frame(rows):
    image = rows[4]
    part = build_prompt(image)[0]["content"][0]
    assert part == {"type": "image", "image": image["frames"][0]}


def test_type_instructions_hint_frames_override_and_system_prompt(rows):
    video = rows[0]
    row = {**video, "problem_type": "numerical", "options": []}
    text = question_text(row, hint="the square starts left")
    assert "Options:" not in text
    assert "number (for example 42 or 3.14)" in text
    assert text.endswith("\nHint: the square starts left")
    reversed_frames = video["frames"][::-1]
    cfg = PromptConfig(
        system_prompt="Be brief.", type_instructions={"numerical": "Just the number."}
    )
    messages = build_prompt(row, cfg, frames=reversed_frames)
    assert messages[0]["role"] == "system"
    assert messages[1]["content"][0]["video"] == reversed_frames
    assert messages[1]["content"][1]["text"].endswith("Just the number.")
    with pytest.raises(ValueError, match="problem_type"):
        question_text({**video, "problem_type": "poetry"})


def test_sampled_fps_fallbacks():
    assert sampled_fps({"timestamps": [0.0, 1.0, 2.0]}) == pytest.approx(1.0)
    assert sampled_fps({"timestamps": [0.0], "fps": 5.0}) == 5.0
    assert sampled_fps({"timestamps": []}) == 2.0


def test_sft_target_and_hints(rows):
    video = rows[0]
    assert sft_target(video) == video["process"] + "\n<answer>A</answer>"
    assert sft_target({**video, "process": ""}) == "<answer>A</answer>"
    trace = "<think>one two three four</think>"
    assert reasoning_hint(trace, 0.5) == "one two"
    assert reasoning_hint(trace, 1.0) == "one two three four"
    assert reasoning_hint(trace, 0.01) == "one"
    assert reasoning_hint("", 1.0) == "" and reasoning_hint(trace, 0.0) == ""


def test_tokenizer_corpus_covers_prompts_and_targets(rows):
    video = rows[0]
    corpus = tokenizer_corpus(rows)
    assert question_text(video) in corpus and sft_target(video) in corpus


def test_a_checkpoint_brings_the_prompt_it_was_trained_with(short_recipe, stage_sft, tmp_path):
    """Issue 12: RLConfig() / evaluation without a prompt use the SFT checkpoint's own."""
    from vlmrl.train.prompts import PromptConfig, resolve_prompt, trained_prompt

    taught = trained_prompt(stage_sft)
    assert taught == short_recipe.sft.prompt and taught != PromptConfig()
    with pytest.warns(UserWarning, match="was trained with"):
        assert resolve_prompt(None, stage_sft) == taught
    with pytest.warns(UserWarning):
        assert resolve_prompt(PromptConfig(), stage_sft) == taught
    own = PromptConfig(reasoning_instruction="Think, then answer.")
    assert resolve_prompt(own, stage_sft) == own
    assert trained_prompt(tmp_path) is None and resolve_prompt(None, tmp_path) == PromptConfig()
