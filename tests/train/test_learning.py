"""Learning self-tests of the GRPO-family trainer (issue 12).

No RL framework ships these: they fail when a change stops the trainer from learning,
not only when it crashes.

- control rewards (one readable from the tokens alone, one that depends on the question
  text) rise by a margin a broken trainer cannot reach, for GRPO, T-GRPO and Reg-GRPO, on
  video, image and mixed batches;
- the loss path's per-token log-probs of every row, after TRL's shuffle and split, equal a
  plain forward of that row built independently from the dataset (and differ when the
  row gets another row's video, text positions for its visual tokens, or a cut prompt);
- one optimizer step moves the log-probs in the direction of the advantages;
- on a task whose answer is only in the order of the frames (which way a square moves),
  RL raises the training accuracy of a model SFT taught only partly.
"""

from __future__ import annotations

import re
import statistics

import numpy as np
import pytest
import torch
from PIL import Image

from tests.train.conftest import frame_rows, make_dataset
from tests.train.test_grpo import forward_logps, make_trainer
from vlmrl.models import TinyModelSpec, build_tiny_model, encode_chats
from vlmrl.train.prompts import build_prompt, tokenizer_corpus
from vlmrl.train.sft import SFTTrainConfig, run_sft

ALGORITHMS = ["grpo", "t_grpo", "reg_grpo"]
VOCAB = 512


# ---------------------------------------------------------------- control rewards

# Two phrasings of each question: the question-dependent control reward asks for "yes" in
# the reasoning after the first phrasing and "no" after the second.
PHRASES = {
    "video": ("Which way does the square move?", "Where does the square go?"),
    "image": ("What color is the image?", "Which color fills the image?"),
}


def answers_a(completions, **kwargs):
    """Token-only control: 1 when the answer is A, whatever the question.

    >>> answers_a([[{"content": "<think>no</think><answer>A</answer>"}]])
    [1.0]
    """
    return [float(bool(re.search(r"<answer>\s*A\s*</answer>", c[0]["content"])))
            for c in completions]


def asked_word(completions, problem, **kwargs):
    """Question-dependent control: "<think>yes</think>" after a first phrasing, "no" after a
    second. A policy that ignores the question text scores 0.5 on a balanced batch.

    >>> asked_word([[{"content": "<think>no</think>"}]], problem=["Where does the square go?"])
    [1.0]
    """
    firsts = {pair[0] for pair in PHRASES.values()}
    return [float(f"<think>{'yes' if p in firsts else 'no'}</think>" in c[0]["content"])
            for c, p in zip(completions, problem, strict=True)]


def control_rows(kind: str) -> list[dict]:
    """Rows of one kind (video, image or mixed), the two phrasings alternating."""
    videos = direction_rows(8, seed=1)
    images = [dict(frame_rows()[4 + i % 2], problem_id=f"image-{i}") for i in range(8)]
    rows = {"video": videos, "image": images, "mixed": videos[:4] + images[:4]}[kind]
    for i, row in enumerate(rows):
        row["problem"] = PHRASES[row["data_type"]][i % 2]
    return rows


def sft_rows_for_controls() -> list[dict]:
    """Every control prompt with all four (word, letter) targets: SFT teaches the format and
    leaves both choices at 50 %, so RL has to find what the control rewards want."""
    rows = []
    for row in control_rows("video") + control_rows("image"):
        for word, letter in (("yes", "A"), ("no", "B"), ("no", "A"), ("yes", "B")):
            rows.append({**row, "process": f"<think>{word}</think>",
                         "solution": f"<answer>{letter}</answer>"})
    return rows


def sft_config(steps: int) -> SFTTrainConfig:
    return SFTTrainConfig(
        max_steps=steps, learning_rate=3e-3, per_device_train_batch_size=8,
        gradient_accumulation_steps=1, lr_scheduler_type="constant", save_strategy="no",
        logging_steps=steps, trainer_kwargs={"disable_tqdm": True, "use_cpu": True},
    )


@pytest.fixture(scope="module")
def control_model_dir(tmp_path_factory):
    rows = sft_rows_for_controls()
    out = tmp_path_factory.mktemp("controls")
    base = build_tiny_model(out / "base", tokenizer_corpus(rows) * 3,
                            TinyModelSpec(vocab_size=VOCAB), seed=0)
    return run_sft(base, make_dataset(rows), out / "sft", sft_config(100))


def reward_curve(trainer, name: str) -> list[float]:
    return [log[f"rewards/{name}/mean"] for log in trainer.state.log_history
            if f"rewards/{name}/mean" in log]


def rl_trainer(model_dir, rows, tmp_path, reward, **overrides):
    settings = dict(algorithm="grpo", num_generations=8, per_device_train_batch_size=32,
                    max_completion_length=16, max_steps=40, learning_rate=2e-3,
                    lr_scheduler_type="constant", temperature=1.0, top_p=1.0, seed=0)
    settings.update(overrides)
    return make_trainer(model_dir, make_dataset(rows), tmp_path, reward_funcs=(reward,),
                        **settings)


CONTROL_CASES = [("grpo", kind) for kind in ("video", "image", "mixed")] + [
    (algorithm, "mixed") for algorithm in ("t_grpo", "reg_grpo")
]


@pytest.mark.parametrize("reward", [answers_a, asked_word], ids=["tokens", "question"])
@pytest.mark.parametrize(("algorithm", "kind"), CONTROL_CASES, ids=lambda v: v)
def test_control_rewards_rise(control_model_dir, tmp_path, algorithm, kind, reward):
    trainer = rl_trainer(control_model_dir, control_rows(kind), tmp_path, reward,
                         algorithm=algorithm)
    trainer.train()
    curve = reward_curve(trainer, reward.__name__)
    start, end = statistics.mean(curve[:3]), statistics.mean(curve[-5:])
    print(f"{algorithm} {kind} {reward.__name__}: {start:.2f} -> {end:.2f}")
    # a trainer with a wrong sign, no gradient, or a reward that never reaches the loss
    # stays at its start or falls; this one closes at least half the gap to 1
    assert end >= max(0.8, start + 0.5 * (1 - start)), curve


# ---------------------------------------------------------------- log-prob consistency


def named_rows() -> list[dict]:
    """The fixture rows, each with its own question text so that a prompt names its row."""
    rows = frame_rows()
    for i, row in enumerate(rows):
        row["problem"] = f"{row['problem']} Clip {'abcdef'[i]}."
    return rows


def plain_logps(model, processor, prompt, completion, *, text_positions=False, cut=0):
    """Log-probs of `completion` after `prompt` from one unpadded model forward."""
    enc = encode_chats(processor, [prompt])
    ids = torch.cat([enc.input_ids[0, cut:], completion]).unsqueeze(0)
    types = torch.cat([enc.mm_token_type_ids[0, cut:], torch.zeros_like(completion)])[None]
    if text_positions:
        types = torch.zeros_like(types)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                       mm_token_type_ids=types, **enc.visual).logits
    logps = torch.log_softmax(logits[0, -len(completion) - 1 : -1].double(), -1)
    return logps.gather(1, completion[:, None])[:, 0]


def test_loss_logps_match_a_plain_forward_after_shuffle(tiny_rl_model_dir, tmp_path):
    rows = named_rows()
    dataset = make_dataset(rows)
    # 4 prompts x G=4 = 16 rows generated at once, shuffled by TRL and split in two chunks
    trainer = make_trainer(
        tiny_rl_model_dir, dataset, tmp_path, algorithm="t_grpo", num_generations=4,
        per_device_train_batch_size=8, max_completion_length=12,
        trainer_kwargs={"disable_tqdm": True, "use_cpu": True, "steps_per_generation": 2},
    )
    trainer.model.train()
    processor, model = trainer.processing_class, trainer.model
    prompts = {
        tuple(encode_chats(processor, [build_prompt(r, trainer.rl.prompt)]).token_lists()[0]): i
        for i, r in enumerate(rows)
    }
    batch = [dataset[i] for i in (0, 1, 4, 5) for _ in range(4)]  # 2 videos, 2 images
    first = trainer._prepare_inputs(batch)  # generates, shuffles, splits, returns chunk 0
    chunks = trainer._buffered_inputs
    assert len(chunks) == 2 and chunks[0] is first
    seen, diffs, worst = [], [], 0.0
    for chunk in chunks:
        assert chunk["prompt_mask"].float().mean() < 1  # the chunk mixes prompt lengths
        logps = forward_logps(trainer, chunk, chunk["visual_rows"]).double()
        for j in range(chunk["prompt_ids"].size(0)):
            prompt_ids = chunk["prompt_ids"][j][chunk["prompt_mask"][j].bool()].tolist()
            i = prompts[tuple(prompt_ids)]  # the dataset row this prompt was built from
            seen.append(i)
            keep = chunk["completion_mask"][j].bool()
            completion = chunk["completion_ids"][j][keep]
            prompt = build_prompt(rows[i], trainer.rl.prompt)
            ref = plain_logps(model, processor, prompt, completion)
            worst = max(worst, (logps[j][keep] - ref).abs().max().item())
            if rows[i]["data_type"] == "video":
                # the same check with the other direction's video, with text positions for
                # the visual tokens, and with the first prompt token cut: it must fail
                other = rows[1 - i]["frames"] if i < 2 else None
                wrong = [
                    plain_logps(model, processor, build_prompt(rows[i], trainer.rl.prompt,
                                                               frames=other), completion),
                    plain_logps(model, processor, prompt, completion, text_positions=True),
                    plain_logps(model, processor, prompt, completion, cut=1),
                ]
                diffs.append([(logps[j][keep] - w).abs().max().item() for w in wrong])
    assert sorted(seen) == sorted([0, 1, 4, 5] * 4)
    assert seen[:8] != [0] * 4 + [1] * 4  # TRL shuffled the generation batch
    tolerance = 1e-5
    assert worst < tolerance, worst
    # each corruption moves some log-prob by well over the tolerance (text positions on a
    # random tiny model: ~2e-4; another video or a cut prompt: ~1e-2)
    assert diffs and all(min(d) > 10 * tolerance for d in diffs), diffs

    # a loss path that pairs video rows with each other's videos is caught
    chunk = chunks[0]
    video = [j for j, r in enumerate(chunk["visual_rows"]) if "pixel_values_videos" in r]
    owners = [prompts[tuple(chunk["prompt_ids"][j][chunk["prompt_mask"][j].bool()].tolist())]
              for j in video]
    swap = {a: b for a, b in zip(video, video[1:] + video[:1], strict=True)}
    if len(set(owners)) > 1:
        crossed = [chunk["visual_rows"][swap.get(j, j)] for j in range(len(chunk["visual_rows"]))]
        bad = forward_logps(trainer, chunk, crossed)
        good = forward_logps(trainer, chunk, chunk["visual_rows"])
        moved = [j for j in video if owners[video.index(j)] != owners[video.index(swap[j])]]
        assert moved and all(
            (bad[j] - good[j])[chunk["completion_mask"][j].bool()].abs().max() > 10 * tolerance
            for j in moved
        )


# ---------------------------------------------------------------- direction


def sequence_logps(trainer, output):
    return forward_logps(trainer, output, output["visual_rows"]).sum(1)  # masked per token


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_one_step_follows_the_advantages(tiny_rl_model_dir, frame_dataset, tmp_path, algorithm):
    trainer = make_trainer(
        tiny_rl_model_dir, frame_dataset, tmp_path, algorithm=algorithm, num_generations=4,
        per_device_train_batch_size=4, max_completion_length=8,
    )
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train
    output = trainer._generate_and_score_completions([frame_dataset[0]] * 4)  # one video group
    assert len(set(map(tuple, output["completion_ids"].tolist()))) > 1  # distinct completions
    output["advantages"] = torch.tensor([1.0, -1.0, 0.0, 0.0])
    before = sequence_logps(trainer, output)
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    trainer._compute_loss(trainer.model, output).backward()
    # a small step along the normalised gradient: the losses differ in scale (Reg-GRPO's
    # gradient is 2 / sqrt(eps) times larger), the direction is what is tested
    norm = torch.sqrt(sum((p.grad**2).sum() for p in params if p.grad is not None))
    with torch.no_grad():
        for p in params:
            if p.grad is not None:
                p -= 0.05 * p.grad / norm
    change = sequence_logps(trainer, output) - before
    print(algorithm, change.tolist())
    assert change[0] > 0 > change[1], change
    # the zero-advantage completions move less than either
    assert change[2:].abs().max() < min(change[0], -change[1]), change


# ---------------------------------------------------------------- a video-dependent control


def square_clip(direction: str, start: int, step: int, size: int = 56) -> list[Image.Image]:
    frames = []
    for t in range(4):
        frame = np.zeros((size, size, 3), dtype=np.uint8)
        x = start + t * step if direction == "right" else start - t * step
        frame[20:34, x : x + 14] = 255
        frames.append(Image.fromarray(frame))
    return frames


def direction_rows(n: int, seed: int) -> list[dict]:
    """Moving squares whose start is random: only the order of the frames gives the way."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        direction = "left" if i % 2 else "right"
        step = int(rng.integers(5, 9))
        start = int(rng.integers(0, 56 - 14 - 3 * step + 1))
        if direction == "left":
            start += 3 * step
        rows.append({
            "problem_id": f"dir-{i}",
            "problem": "Which way does the square move?",
            "data_type": "video",
            "problem_type": "multiple choice",
            "options": ["A. left", "B. right"],
            "solution": f"<answer>{'A' if direction == 'left' else 'B'}</answer>",
            "path": f"videos/dir-{i}.mp4",
            "data_source": "synthetic/motion",
            "frames": square_clip(direction, start, step),
            "fps": 8.0,
            "frame_indices": [0, 4, 8, 12],
            "timestamps": [0.0, 0.5, 1.0, 1.5],
        })
    return rows


def coloured(rows: list[dict], seed: int) -> list[dict]:
    """The same clips with the square red or green: the answer is only in the frames."""
    rng = np.random.default_rng(seed)
    for row in rows:
        colour = "red" if rng.random() < 0.5 else "green"
        rgb = (220, 40, 40) if colour == "red" else (40, 200, 60)
        frames = []
        for frame in row["frames"]:
            pixels = np.asarray(frame).copy()
            pixels[pixels.sum(-1) > 0] = rgb
            frames.append(Image.fromarray(pixels))
        row.update(frames=frames, problem="What color is the moving square?",
                   options=["A. red", "B. green"],
                   solution=f"<answer>{'A' if colour == 'red' else 'B'}</answer>")
    return rows


def greedy_accuracy(model, processor, rows, prompt) -> float:
    from vlmrl.rewards import get_reward

    enc = encode_chats(processor, [build_prompt(r, prompt) for r in rows])
    with torch.no_grad():
        out = model.generate(**enc.model_inputs(), max_new_tokens=16, do_sample=False,
                             suppress_tokens=[model.config.video_token_id])
    texts = processor.batch_decode(out[:, enc.input_ids.size(1):], skip_special_tokens=True)
    scores = get_reward("accuracy")([[{"role": "assistant", "content": t}] for t in texts],
                                    solution=[r["solution"] for r in rows],
                                    problem_type=[r["problem_type"] for r in rows])
    return statistics.mean(scores)


def test_rl_raises_an_accuracy_only_the_frames_give(tmp_path):
    from vlmrl.rewards import get_reward

    sft_rows = coloured(direction_rows(16, seed=7), seed=7)
    rl_rows = coloured(direction_rows(32, seed=8), seed=8)  # clips SFT never saw
    base = build_tiny_model(tmp_path / "base", tokenizer_corpus(sft_rows) * 3,
                            TinyModelSpec(vocab_size=VOCAB), seed=0)
    # a short SFT: the format is learnt, the colour only partly
    sft = run_sft(base, make_dataset(sft_rows), tmp_path / "sft", sft_config(60))
    accuracy = get_reward("accuracy")
    trainer = rl_trainer(sft, rl_rows, tmp_path, accuracy, per_device_train_batch_size=64,
                         max_steps=40)
    model, processor, prompt = trainer.model, trainer.processing_class, trainer.rl.prompt
    model.eval()
    before = greedy_accuracy(model, processor, rl_rows, prompt)
    trainer.train()
    model.eval()
    after = greedy_accuracy(model, processor, rl_rows, prompt)
    curve = reward_curve(trainer, accuracy.__name__)
    start, end = statistics.mean(curve[:5]), statistics.mean(curve[-10:])
    print(f"training accuracy {start:.2f} -> {end:.2f}; greedy {before:.2f} -> {after:.2f}")
    assert 0.3 < start < 0.8  # partly taught: room to learn in both directions
    assert end >= start + 0.15, curve
    # greedy answers need not move (measured 0.69 -> 0.69) but must not collapse
    assert after >= before - 0.1, (before, after)
