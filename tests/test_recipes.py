"""Recipes: every shipped one validates and builds its trainer configs; bad ones fail clearly."""

import dataclasses
import json

import pytest
import torch
import yaml

from vlmrl.recipes import Recipe, RecipeError, load_recipe, recipe_names
from vlmrl.train.config_io import ConfigError

SHIPPED = {"tiny-cpu", "video-r1-7b", "visual-rft-detection", "vlm-r1-ovd", "deepvideo-r1"}
MINIMAL = {"data": {"synthetic": {}}, "model": {"tiny": {}}}


def trl_configs(recipe, tmp_path):
    """The TRL configs (no model is loaded); bf16 recipes are checked on CPU where needed."""
    cpu = {} if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else {"use_cpu": True}
    sections = {"sft": recipe.sft, "rl": recipe.rl}
    return {
        name: dataclasses.replace(cfg, trainer_kwargs={**cfg.trainer_kwargs, **cpu}).to_trl(
            tmp_path / name
        )
        for name, cfg in sections.items()
        if cfg is not None
    }


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_recipes_validate_and_build_trainer_configs(name, tmp_path):
    assert set(recipe_names()) >= SHIPPED
    recipe = load_recipe(name)
    assert recipe.name == name and recipe.description
    assert Recipe.from_dict(recipe.to_dict()) == recipe  # to_dict is complete
    configs = trl_configs(recipe, tmp_path)
    grpo = configs["rl"]
    for key in ("num_generations", "max_completion_length", "temperature", "top_p", "beta",
                "learning_rate", "weight_decay", "max_grad_norm", "loss_type"):
        assert getattr(grpo, key) == getattr(recipe.rl, key), key
    assert grpo.report_to == [] or grpo.report_to == "none" or grpo.report_to == ["none"]
    if recipe.sft is not None:
        assert configs["sft"].learning_rate == recipe.sft.learning_rate
        assert configs["sft"].max_length is None  # never truncates through visual tokens
    assert set(recipe.eval.benchmarks) <= set(recipe.benchmark_names())


def test_video_r1_recipe_has_the_published_hyper_parameters():
    r = load_recipe("video-r1-7b")
    rl, sft = r.rl, r.sft
    assert (rl.algorithm, rl.num_generations, rl.num_shuffled) == ("t_grpo", 8, 4)
    assert (rl.temporal.alpha, rl.temporal.mu) == (0.3, 1.0)
    assert (rl.temperature, rl.top_p, rl.max_completion_length) == (1.0, 0.95, 768)
    assert (rl.learning_rate, rl.lr_scheduler_type, rl.beta) == (1e-6, "cosine", 0.04)
    assert (rl.weight_decay, rl.max_grad_norm, rl.bf16) == (0.01, 5.0, True)
    assert (rl.length_bonus.l_min, rl.length_bonus.l_max, rl.length_bonus.omega) == (320, 512, 0.2)
    assert (sft.learning_rate, sft.num_train_epochs, sft.bf16) == (1e-6, 1.0, True)
    assert (r.frames.train.max_frames, r.frames.train.max_pixels) == (16, 128 * 28 * 28)
    assert (r.frames.eval.max_frames, r.frames.eval.max_pixels) == (16, 256 * 28 * 28)
    assert r.model.path == "models/Qwen2.5-VL-7B-Instruct" and r.model.tiny is None
    assert (r.eval.temperature, r.eval.top_p, r.eval.max_new_tokens) == (0.1, 0.001, 1024)


def test_published_reward_set_ups():
    rft = load_recipe("visual-rft-detection").rl
    assert rft.reward_funcs == ["iou_confidence", "format"]
    ovd = load_recipe("vlm-r1-ovd").rl
    assert (ovd.reward_funcs, ovd.beta, ovd.num_generations) == (["od_length", "format"], 0.0, 8)
    deep = load_recipe("deepvideo-r1").rl
    assert deep.algorithm == "reg_grpo" and deep.augment.enabled and not deep.temporal_enabled


def test_recipe_hash_is_stable(tmp_path):
    recipe = load_recipe("tiny-cpu")
    assert load_recipe("tiny-cpu").sha256 == recipe.sha256
    # the same content written differently (sorted keys, flow style) hashes the same
    path = tmp_path / "same.yaml"
    path.write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=True, default_flow_style=True))
    assert load_recipe(path).sha256 == recipe.sha256
    assert json.loads(json.dumps(recipe.to_dict())) == recipe.to_dict()  # plain JSON types
    assert recipe.override({"rl": {"max_steps": 3}}).sha256 != recipe.sha256


def test_seed_and_overrides(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL, "seed": 7, "rl": {"seed": 3}}))
    recipe = load_recipe(path, {"sft": {"max_steps": 2}})
    assert (recipe.sft.seed, recipe.rl.seed, recipe.sft.max_steps) == (7, 3, 2)
    assert recipe.name == "r"
    reseeded = recipe.override({"seed": 11})
    assert (reseeded.seed, reseeded.sft.seed, reseeded.rl.seed) == (11, 11, 11)
    # YAML 1.1 would read 1e-6 as a string; recipes read it as a number, ints become floats
    path.write_text("data: {synthetic: {}}\nmodel: {tiny: {}}\n"
                    "rl: {learning_rate: 1e-6, temporal: {alpha: 1}}\n")
    recipe = load_recipe(path)
    assert recipe.rl.learning_rate == 1e-6 and isinstance(recipe.rl.temporal.alpha, float)


BAD = [
    ({"sft": {"learnig_rate": 1}},
     "sft.learnig_rate: unknown key (did you mean 'learning_rate'?); valid: "),
    ({"rl": {"temporal": {"alpha": "x"}}}, "rl.temporal.alpha: expected a number, got 'x'"),
    ({"rl": {"algorithm": "ppo"}},
     "rl.algorithm: expected one of 'grpo', 't_grpo', 'reg_grpo', got 'ppo'"),
    ({"rl": {"loss_type": "dapoo"}}, "rl.loss_type: expected one of 'grpo', "),
    ({"rl": {"reward_weights": [1.0, "a"]}}, "rl.reward_weights[1]: expected a number, got 'a'"),
    ({"rl": {"reward_weights": [1.0]}}, "rl.reward_weights: needs one weight per reward function"),
    ({"rl": {"epsilon_high": "big"}}, "rl.epsilon_high: expected a number or null, got 'big'"),
    ({"rl": {"reward_funcs": ["accuracy", "iou"]}}, "rl.reward_funcs[1]: unknown reward 'iou'"),
    ({"rl": {"reward_funcs": ["overlong"], "algorithm": "grpo",
             "reward_params": {"overlong": {"max_len": 3}}}},
     "rl.reward_params.overlong: reward 'overlong' has no parameter(s) ['max_len']"),
    ({"rl": {"reward_funcs": ["format"]}}, "rl.accuracy_reward: 'accuracy' is not among"),
    ({"rl": {"algorithm": "reg_grpo", "scale_rewards": "batch"}},
     "rl: reg_grpo regresses group-standardised advantages"),
    ({"sft": {"lr_scheduler_type": "cosin"}}, "sft.lr_scheduler_type: expected one of linear, "),
    ({"sft": 3}, "sft: expected a mapping or null, got 3"),
    ({"sft": {"curriculum": [{"families": [], "max_steps": 5}]}},
     "sft.curriculum[0]: a curriculum phase needs at least one family"),
    ({"sft": {"curriculum": [{"families": ["motion"], "max_steps": 0}]}},
     "sft.curriculum[0].max_steps: must be >= 1, got 0"),
    ({"sft": {"curriculum": [{"families": ["motion"], "max_steps": 9, "lr_scheduler_type": "cosin"}]}},
     "sft.curriculum[0].lr_scheduler_type: expected one of linear, "),
    ({"sft": {"report_to": 5}}, "sft.report_to: expected a string or a list, got 5"),
    ({"frames": {"train": {"min_frames": 8, "max_frames": 4}}},
     "frames.train: FrameOptions: max_frames must be >= min_frames"),
    ({"model": {"tiny": {"hidden_size": "big"}}},
     "model.tiny.hidden_size: expected an integer, got 'big'"),
    ({"model": {"tiny": {}, "path": "models/x"}}, "model: give exactly one of tiny"),
    ({"model": {"tiny": {}, "dtype": "fp8"}}, "model.dtype: unknown dtype 'fp8'"),
    ({"data": {"synthetic": None, "rl": {"annotations": "rl.json"}}},
     "data.rl.media_root: required key missing"),
    ({"data": {"synthetic": None}}, "data: needs synthetic, or an rl source"),
    ({"data": {"synthetic": {"sizes": {"sft": -1.5}}}},
     "data.synthetic.sizes.sft: expected an integer, got -1.5"),
    ({"eval": {"benchmarks": ["synthetic", "mvbench"]}},
     "eval.benchmarks[1]: unknown benchmark 'mvbench'; data provides: synthetic"),
    ({"seed": "zero"}, "seed: expected an integer, got 'zero'"),
    ({"colour": 1}, "colour: unknown key; valid: data, description, eval, frames, launch, model, name"),
]


@pytest.mark.parametrize(("changes", "message"), BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_recipes_name_the_file_and_the_key(changes, message, tmp_path):
    path = tmp_path / "bad.yaml"
    data = {**MINIMAL, **changes}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    assert str(err.value).startswith(f"{path}: {message}")


def test_bad_files(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("rl:\n  beta: 0.1\n  beta: 0.2\n")
    with pytest.raises(RecipeError, match=r"(?s)r\.yaml: invalid YAML: .*duplicate key 'beta'.*line 3"):
        load_recipe(path)
    path.write_text("rl: [unclosed\n")
    with pytest.raises(RecipeError, match="invalid YAML"):
        load_recipe(path)
    path.write_text("- just\n- a list\n")
    with pytest.raises(RecipeError, match="a recipe must be a mapping"):
        load_recipe(path)
    with pytest.raises(FileNotFoundError, match="shipped: .*tiny-cpu"):
        load_recipe("no-such-recipe")


def test_config_errors_carry_the_key_path():
    from vlmrl.train.config_io import config_from_dict
    from vlmrl.train.rl_config import RLConfig

    with pytest.raises(ConfigError) as err:
        config_from_dict(RLConfig, {"augment": {"window": "ten"}}, "rl")
    assert err.value.path == "rl.augment.window"
    assert err.value.message == "expected an integer, got 'ten'"
