"""Every reward runs as a TRL 1.16 GRPOTrainer reward function.

The rewards are driven through TRL's own ``GRPOTrainer._calculate_rewards`` (on a stub trainer,
no model), so they receive exactly what training passes them: ``prompts``, ``completions``,
``completion_ids``, ``trainer_state``, ``log_extra``, ``log_metric`` and every dataset column.
"""

from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
grpo = pytest.importorskip("trl.trainer.grpo_trainer")
from transformers import TrainerState  # noqa: E402
from trl.trainer.utils import get_callable_name  # noqa: E402

from vlmrl.rewards import REWARD_RANGES, REWARDS, get_reward  # noqa: E402

# One dataset row per problem type, in the record schema, plus columns no reward uses.
ROWS = [
    ("multiple choice", "<answer>B</answer>", "<think>the dog is left</think><answer>B</answer>"),
    ("numerical", "<answer>3.5</answer>", "<think>count</think><answer>3.50</answer>"),
    ("OCR", "<answer>STOP here</answer>", "<think>read</think><answer>STOP</answer>"),
    (
        "free-form",
        "<answer>a man rides a bike</answer>",
        "<think>look</think><answer>a man riding bikes</answer>",
    ),
    ("regression", "<answer>0</answer>", "<think>none</think><answer>0</answer>"),
    (
        "classification",
        "<answer>golden retriever</answer>",
        "<think>fur</think><answer>Golden_Retriever</answer>",
    ),
    (
        "grounding",
        "<answer>[0, 0, 100, 100]</answer>",
        '<think>box</think><answer>{"bbox_2d": [0, 0, 100, 50]}</answer>',
    ),
    ("detection", "<answer>No Objects</answer>", "<think>empty</think><answer>No Objects</answer>"),
    (
        "ovd",
        '<answer>[{"bbox_2d": [0, 0, 10, 10], "label": "dog"}]</answer>',
        '<think>x</think><answer>```json\n[{"bbox_2d": [0, 0, 10, 10], "label": "dog"}]\n```</answer>',
    ),
]


def make_inputs():
    inputs, prompts, completions, completion_ids = [], [], [], []
    for k, (ptype, solution, completion) in enumerate(ROWS):
        prompt = [
            {
                "role": "user",
                "content": [{"type": "video"}, {"type": "text", "text": f"question {k}"}],
            }
        ]
        inputs.append({
            "prompt": prompt, "problem_id": k, "problem": f"question {k}", "data_type": "video",
            "problem_type": ptype, "options": ["A. x", "B. y"], "solution": solution,
            "path": f"videos/{k}.mp4", "data_source": "synthetic", "process": "<think>...</think>",
            "completion_length": 400,
        })  # fmt: skip
        prompts.append(prompt)
        completions.append([{"role": "assistant", "content": completion}])
        completion_ids.append(list(range(300 + 100 * k)))
    return inputs, prompts, completions, completion_ids


def stub_trainer(reward_funcs):
    logged = {}
    return SimpleNamespace(
        accelerator=SimpleNamespace(device=torch.device("cpu"), is_main_process=True),
        args=SimpleNamespace(report_to=[]),
        state=TrainerState(),
        reward_funcs=reward_funcs,
        reward_processing_classes=[None] * len(reward_funcs),
        reward_func_names=[get_callable_name(f) for f in reward_funcs],  # as GRPOTrainer.__init__
        environments=None,
        _log_completion_extra=lambda column, values: logged.setdefault(column, values),
        _log_metric=lambda name, value: logged.setdefault(name, value),
    )


def test_all_rewards_through_grpo_calculate_rewards():
    funcs = [get_reward(name) for name in REWARDS] + [
        get_reward("accuracy", ovd_metric="od_weighted", regression_metric="mra")
    ]
    trainer = stub_trainer(funcs)
    assert trainer.reward_func_names[: len(REWARDS)] == list(REWARDS)

    inputs, prompts, completions, completion_ids = make_inputs()
    rewards = grpo.GRPOTrainer._calculate_rewards(
        trainer, inputs, prompts, completions, completion_ids
    )

    assert rewards.shape == (len(ROWS), len(funcs))
    for j, name in enumerate(REWARDS):
        low, high = REWARD_RANGES[name]
        column = rewards[:, j]
        finite = column[~torch.isnan(column)]  # None -> NaN: "does not apply"
        assert ((finite >= low - 1e-6) & (finite <= high + 1e-6)).all(), name

    col = {name: rewards[:, j].tolist() for j, name in enumerate(REWARDS)}
    assert col["format"] == [1.0] * len(ROWS)
    accuracy = col["accuracy"]
    assert accuracy[0] == 1.0 and accuracy[1] == 1.0
    assert accuracy[2] == pytest.approx(0.5)  # 1 deletion in 2 words
    assert accuracy[4] == 1.0  # ground truth 0 answered exactly
    assert accuracy[5] == 1.0
    assert accuracy[6] == pytest.approx(0.5)
    assert accuracy[7] == 2.0  # "No Objects" for an empty image: full R_IoU + R_conf
    assert accuracy[8] == pytest.approx(1.0)
    assert col["iou_confidence"][7] == 2.0 and all(
        v != v for v in col["iou_confidence"][:7]
    )  # NaN elsewhere
    assert col["grounding_iou"][6] == pytest.approx(0.5)
    assert col["mra"][4] == 1.0
    assert col["od_length"][8] == pytest.approx(1.0)
    # Lengths come from completion_ids: 300 + 100 k tokens; overlong default 768 / 128.
    assert col["overlong"][:3] == [0.0, 0.0, 0.0]
    assert col["overlong"][4] == pytest.approx((640 - 700) / 128)
    assert col["overlong"][5:] == [-1.0] * 4
    assert rewards[:, -1].tolist()[4] == 1.0  # MRA variant of accuracy


def test_plain_text_completions_and_plain_functions():
    # Non-conversational datasets: completions are strings; REWARDS entries work unbound too.
    funcs = list(REWARDS.values())
    trainer = stub_trainer(funcs)
    inputs, _, completions, completion_ids = make_inputs()
    prompts = [f"question {k}" for k in range(len(ROWS))]
    texts = [c[0]["content"] for c in completions]
    rewards = grpo.GRPOTrainer._calculate_rewards(trainer, inputs, prompts, texts, completion_ids)
    assert rewards[:, 0].tolist() == [1.0] * len(ROWS)
    assert trainer.reward_func_names[0] == "format_reward"
