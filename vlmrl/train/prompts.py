"""Frame-dataset row -> chat prompt: the one place SFT, RL and evaluation build prompts.

A row is a frame-dataset row (vlmrl.data): problem, problem_type, options, data_type,
frames (PIL images: the sampled video frames, or one image), timestamps/fps. The prompt
is one user message holding the visual part (``{"type": "video", "video": frames, "fps":
rate}`` or ``{"type": "image", "image": frame}``) then the question text: the problem,
the options after a line "Options:", the reasoning instruction (think like a person, with
self-reflection; reasoning in <think>, answer in <answer>) and a type-specific answer
instruction. RL may add a hint (part of a reasoning trace) or replace the frames
(shuffled / perturbed) without touching anything else.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vlmrl.models.multimodal import DEFAULT_VIDEO_FPS

REASONING_INSTRUCTION = (
    "Think about this question the way a careful person would: reason it through in your "
    "own words, question your first impression, and feel free to pause, reconsider and "
    'check yourself ("hmm", "wait", "let me look again"). Write your reasoning between '
    "<think> and </think>, then give the final answer between <answer> and </answer>."
)

TYPE_INSTRUCTIONS: dict[str, str] = {
    "multiple choice": "Put only the letter of the correct option (A, B, C, ...) inside <answer> </answer>.",
    "numerical": "Put only the number (for example 42 or 3.14) inside <answer> </answer>.",
    "regression": "Put only the number (for example 42 or 3.14) inside <answer> </answer>.",
    "OCR": "Put the transcribed text inside <answer> </answer>.",
    "free-form": "Put your text answer inside <answer> </answer>.",
    "classification": "Put only the category name inside <answer> </answer>.",
    "grounding": (
        "Put the bounding box of the described region as [x1, y1, x2, y2] in pixel "
        "coordinates inside <answer> </answer>."
    ),
    "detection": (
        'Put the list of boxes as [{"Position": [x1, y1, x2, y2], "Confidence": 0.93}, ...] '
        "with integer coordinates from 0 to 1000 and a two-decimal confidence inside "
        "<answer> </answer>, or No Objects if there is none."
    ),
    "ovd": (
        'Put the objects as a ```json list [{"bbox_2d": [x1, y1, x2, y2], "label": "name"}, '
        "...] inside <answer> </answer>, or None if none of them is present."
    ),
}

_THINK_TAGS = re.compile(r"</?think>")


@dataclass
class PromptConfig:
    """How rows become prompts.

    reasoning_instruction: appended after the question (and options).
    type_instructions: per problem_type answer instruction appended last; overrides are
        merged over the defaults.
    options_header: the line that introduces the options.
    hint_prefix: the text introducing a hint (difficulty-aware augmentation).
    system_prompt: optional system message (None: no system message).
    """

    reasoning_instruction: str = REASONING_INSTRUCTION
    type_instructions: dict[str, str] = field(default_factory=dict)
    options_header: str = "Options:"
    hint_prefix: str = "Hint: "
    system_prompt: str | None = None

    def instruction_for(self, problem_type: str) -> str:
        merged = {**TYPE_INSTRUCTIONS, **self.type_instructions}
        try:
            return merged[problem_type]
        except KeyError:
            raise ValueError(
                f"no answer instruction for problem_type {problem_type!r}; known: {sorted(merged)}"
            ) from None


def sampled_fps(row: Mapping[str, Any]) -> float:
    """Rate of the stored frames (not of the source video), from their timestamps.

    Used for M-RoPE time positions. Falls back to the row's fps, then to Qwen's 2 fps.
    """
    stamps = row.get("timestamps") or []
    if len(stamps) >= 2 and stamps[-1] > stamps[0]:
        return (len(stamps) - 1) / (float(stamps[-1]) - float(stamps[0]))
    fps = row.get("fps")
    return float(fps) if fps and fps > 0 else DEFAULT_VIDEO_FPS


def question_text(
    row: Mapping[str, Any], config: PromptConfig | None = None, hint: str | None = None
) -> str:
    """The text part of the user message for a row (question, options, instructions, hint)."""
    config = config or PromptConfig()
    lines = [str(row["problem"]).strip()]
    options: Sequence[str] = row.get("options") or []
    if options:
        lines.append(config.options_header)
        lines.extend(str(o) for o in options)
    text = "\n".join(lines)
    text += "\n" + config.reasoning_instruction + " " + config.instruction_for(row["problem_type"])
    if hint:
        text += "\n" + config.hint_prefix + hint
    return text


def visual_part(row: Mapping[str, Any], frames: Any = None) -> dict[str, Any]:
    """The image or video content part; `frames` replaces the row's frames (shuffled, noisy)."""
    frames = row["frames"] if frames is None else frames
    if len(frames) == 0:
        raise ValueError(f"row {row.get('problem_id')!r} has no frames")
    if row["data_type"] == "image":
        return {"type": "image", "image": frames[0]}
    if row["data_type"] == "video":
        return {"type": "video", "video": frames, "fps": sampled_fps(row)}
    raise ValueError(f"unknown data_type {row['data_type']!r}")


def build_prompt(
    row: Mapping[str, Any],
    config: PromptConfig | None = None,
    *,
    frames: Any = None,
    hint: str | None = None,
) -> list[dict[str, Any]]:
    """The conversational prompt (list of messages) for one frame-dataset row."""
    config = config or PromptConfig()
    messages: list[dict[str, Any]] = []
    if config.system_prompt:
        messages.append(
            {"role": "system", "content": [{"type": "text", "text": config.system_prompt}]}
        )
    content = [visual_part(row, frames), {"type": "text", "text": question_text(row, config, hint)}]
    messages.append({"role": "user", "content": content})
    return messages


def sft_target(row: Mapping[str, Any]) -> str:
    """What SFT teaches: the chain of thought (when present) followed by the answer."""
    process = (row.get("process") or "").strip()
    solution = str(row["solution"]).strip()
    return f"{process}\n{solution}" if process else solution


def reasoning_hint(process: str, fraction: float) -> str:
    """The first `fraction` of the words of a <think> trace, tags removed ("" for none)."""
    words = _THINK_TAGS.sub(" ", process or "").split()
    if not words or fraction <= 0:
        return ""
    return " ".join(words[: max(1, math.ceil(fraction * len(words)))])


def tokenizer_corpus(
    rows: Iterable[Mapping[str, Any]], config: PromptConfig | None = None
) -> list[str]:
    """Every text a model sees for these rows (prompts, traces, answers): train a tokenizer on it."""
    config = config or PromptConfig()
    texts = [config.reasoning_instruction, config.options_header, config.hint_prefix]
    texts += list({**TYPE_INSTRUCTIONS, **config.type_instructions}.values())
    for row in rows:
        texts.append(question_text(row, config))
        texts.append(sft_target(row))
    return texts


def trained_prompt(checkpoint: Any) -> PromptConfig | None:
    """The prompt a vlmrl checkpoint was trained with (its lineage's recipe), or None.

    An SFT checkpoint answers the prompt it was taught; RL or evaluation with another one
    measures something else (the library default is Video-R1's long prompt, the tiny demo
    trains with a short one).
    """
    from pathlib import Path

    from vlmrl.lineage import LINEAGE, read_manifest

    if checkpoint is None or not (Path(checkpoint) / LINEAGE).is_file():
        return None
    manifest = read_manifest(checkpoint)
    stage = {"sft": "sft", "rl": "rl"}.get(manifest.get("kind", ""))
    recipe = manifest.get("recipe") or {}
    prompt = (recipe.get(stage) or {}).get("prompt") if stage else None
    return PromptConfig(**prompt) if isinstance(prompt, dict) else None


def resolve_prompt(configured: PromptConfig | None, checkpoint: Any) -> PromptConfig:
    """`configured`, unless it is None or the library default and the checkpoint was trained
    with another prompt: then that one (with a warning naming both)."""
    import warnings

    trained = trained_prompt(checkpoint)
    if configured is not None and configured != PromptConfig():
        return configured
    if trained is not None and trained != PromptConfig():
        warnings.warn(f"using the prompt {checkpoint} was trained with, not the library default "
                      f"(reasoning instruction {trained.reasoning_instruction!r})", stacklevel=2)
        return trained
    return configured or PromptConfig()
