"""Recipe values are checked at load, with the key path: nothing bad waits for the trainer.

Issue 13, finding 3: a negative learning rate, batch 0, G = 0, a batch not divisible by G,
NaN, a negative temperature, negative sizes and steps and unknown trainer_kwargs keys were
all accepted by load_recipe and only failed (or silently trained wrong) inside a run.
"""

import dataclasses
import typing

import pytest
import yaml

from vlmrl.cli import main
from vlmrl.recipes import VALUE_RULES, Recipe, RecipeError, deep_merge, load_recipe
from vlmrl.train.config_io import ConfigError

MINIMAL = {"data": {"synthetic": {}}, "model": {"tiny": {}}}


def load_with(tmp_path, changes):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL, **changes}))
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    return path, str(err.value)


BAD_VALUES = [
    ({"rl": {"learning_rate": -1}}, "rl.learning_rate: must be > 0, got -1.0"),
    ({"sft": {"learning_rate": 0}}, "sft.learning_rate: must be > 0, got 0.0"),
    ({"rl": {"per_device_train_batch_size": 0}}, "rl.per_device_train_batch_size: must be >= 1, got 0"),
    ({"rl": {"num_generations": 0}}, "rl.num_generations: must be >= 2, got 0"),
    ({"rl": {"num_generations": 3}},  # the default batch is 8
     "rl.per_device_train_batch_size: per_device_train_batch_size * steps_per_generation (8) "
     "must be a multiple of num_generations (3)"),
    ({"rl": {"beta": float("nan")}}, "rl.beta: must be a finite number, got nan"),
    ({"rl": {"reward_weights": [1.0, float("inf")]}},
     "rl.reward_weights[1]: must be a finite number, got inf"),
    ({"rl": {"temperature": -0.5}}, "rl.temperature: must be > 0, got -0.5"),
    ({"rl": {"top_p": 0}}, "rl.top_p: must be in (0, 1], got 0.0"),
    ({"rl": {"max_steps": -2}}, "rl.max_steps: must be -1 (the epochs decide) or >= 1, got -2"),
    ({"sft": {"max_steps": 0}}, "sft.max_steps: must be -1 (the epochs decide) or >= 1, got 0"),
    ({"sft": {"num_train_epochs": -1}}, "sft.num_train_epochs: must be > 0, got -1.0"),
    ({"rl": {"max_completion_length": 0}}, "rl.max_completion_length: must be >= 1, got 0"),
    ({"rl": {"save_strategy": "step"}}, "rl.save_strategy: must be one of 'no', 'steps', "),
    ({"rl": {"temporal": {"num_shuffled": 0}}}, "rl.temporal.num_shuffled: must be >= 1, got 0"),
    ({"rl": {"length_bonus": {"l_min": 500, "l_max": 100}}},
     "rl.length_bonus.l_max: must be >= l_min (500), got 100"),
    ({"rl": {"augment": {"max_mask_prob": 1.5}}}, "rl.augment.max_mask_prob: must be in [0, 1], got 1.5"),
    ({"sft": {"curriculum": [{"families": ["motion"], "max_steps": 2, "learning_rate": -1}]}},
     "sft.curriculum[0].learning_rate: must be > 0, got -1.0"),
    ({"data": {"synthetic": {"sizes": {"rl": -4}}}}, "data.synthetic.sizes.rl: must be >= 0, got -4"),
    ({"model": {"tiny": {"hidden_size": -64}}}, "model.tiny.hidden_size: must be > 0, got -64"),
    ({"model": {"tiny": {"hidden_size": 66}}},
     "model.tiny: hidden_size must be divisible by num_attention_heads"),
    ({"model": {"tiny": {}, "threads": 0}}, "model.threads: must be >= 1, got 0"),
    ({"eval": {"batch_size": 0}}, "eval.batch_size: must be >= 1, got 0"),
    ({"eval": {"temperature": 0, "do_sample": True}},
     "eval.temperature: must be > 0 when eval.do_sample is true"),
    ({"seed": -1}, "seed: must be in [0, 4294967295], got -1"),
    ({"rl": {"trainer_kwargs": {"disable_tqdmm": True}}},
     "rl.trainer_kwargs.disable_tqdmm: unknown GRPOConfig field (did you mean 'disable_tqdm'?)"),
    ({"sft": {"trainer_kwargs": {"max_lenght": 5}}},
     "sft.trainer_kwargs.max_lenght: unknown SFTConfig field"),
    ({"sft": {"trainer_kwargs": {"learning_rate": 0.1}}},
     "sft.trainer_kwargs.learning_rate: set sft.learning_rate instead"),
    ({"rl": {"trainer_kwargs": {"num_generations": 4}}},
     "rl.trainer_kwargs.num_generations: set rl.num_generations instead"),
    ({"sft": {"trainer_kwargs": {"max_length": 512}}},
     "sft.trainer_kwargs.max_length: set by vlmrl: never truncated"),
    ({"rl": {"trainer_kwargs": {"output_dir": "/tmp/x"}}}, "rl.trainer_kwargs.output_dir: set by vlmrl"),
    ({"rl": {"algorithm": "reg_grpo", "trainer_kwargs": {"steps_per_generation": 4}}},
     "rl.trainer_kwargs.steps_per_generation: set by vlmrl: 1 for reg_grpo"),
]


@pytest.mark.parametrize(("changes", "message"), BAD_VALUES, ids=[m.split(":")[0] for _, m in BAD_VALUES])
def test_bad_values_fail_at_load_with_the_key_path(changes, message, tmp_path):
    path, error = load_with(tmp_path, changes)
    assert error.startswith(f"{path}: {message}"), error


def test_good_trainer_kwargs_and_edge_values_load(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text(yaml.safe_dump({**MINIMAL, "seed": 0,
                                    "rl": {"max_steps": -1, "beta": 0, "num_generations": 2,
                                           "per_device_train_batch_size": 4,
                                           "trainer_kwargs": {"disable_tqdm": True, "use_cpu": True,
                                                              "steps_per_generation": 2}},
                                    "sft": {"trainer_kwargs": {"disable_tqdm": True}}}))
    recipe = load_recipe(path)
    assert recipe.rl.trainer_kwargs["steps_per_generation"] == 2 and recipe.rl.beta == 0


def test_from_dict_and_override_check_too():
    with pytest.raises(ConfigError) as err:
        Recipe.from_dict({**MINIMAL, "rl": {"learning_rate": -1}})
    assert err.value.path == "rl.learning_rate"
    recipe = Recipe.from_dict(MINIMAL)
    with pytest.raises(ConfigError) as err:
        recipe.override({"rl": {"num_generations": 0}})
    assert (err.value.path, err.value.message) == ("rl.num_generations", "must be >= 2, got 0")


def test_override_errors_name_the_override(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(MINIMAL))
    with pytest.raises(RecipeError) as err:
        load_recipe(path, {"rl": {"temperature": -1}})
    assert str(err.value) == (f"{path}: rl.temperature: must be > 0, got -1.0 "
                              "(from the override rl.temperature=-1)")


# What each violating value looks like, by the dataclass the rule sits on; the path of one
# instance of that class in a default recipe.
RULE_PATHS = {
    "Recipe": "", "SyntheticData": "data.synthetic", "SynthSizes": "data.synthetic.sizes",
    "TinyModelSpec": "model.tiny", "ModelSettings": "model", "RunSettings": "rl",
    "SFTTrainConfig": "sft", "RLConfig": "rl", "TemporalConfig": "rl.temporal",
    "LengthBonusConfig": "rl.length_bonus", "RegressionConfig": "rl.regression", "RolloutConfig": "rl.rollout",
    "AugmentConfig": "rl.augment", "EvalSection": "eval", "SFTPhase": "sft.curriculum[0]",
    "LaunchSettings": "launch",
}
CANDIDATES = (-1, 0, -0.5, 1.5, 2**40, "bogus")


def _nested(path: str, field: str, value):
    if path == "sft.curriculum[0]":
        return {"sft": {"curriculum": [{"families": ["motion"], "max_steps": 1, field: value}]}}
    change = {field: value}
    for part in reversed([p for p in path.split(".") if p]):
        change = {part: change}
    return change


RULES = [(cls, field, rule) for cls, table in VALUE_RULES.items() for field, rule in table.items()]


@pytest.mark.parametrize(("cls", "field", "rule"), RULES,
                         ids=[f"{c.__name__}.{f}" for c, f, _ in RULES])
def test_every_value_rule_is_applied_at_its_key_path(cls, field, rule):
    """Each rule of the table rejects a violating value, naming the key path and the bound."""
    kinds = typing.get_args(typing.get_type_hints(cls)[field]) or (typing.get_type_hints(cls)[field],)
    bad = next(v for v in CANDIDATES
               if (type(v) in kinds or type(v) is int and float in kinds) and not rule.test(v))
    path = RULE_PATHS[cls.__name__]
    with pytest.raises(ConfigError) as err:
        Recipe.from_dict(deep_merge(Recipe.from_dict(MINIMAL).to_dict(), _nested(path, field, bad)))
    assert err.value.path == f"{path}.{field}".lstrip(".")
    assert err.value.message.startswith(f"must be {rule.text}, got ")


def _numeric_fields(cls, seen=None):
    """Every (class, field) with a number type in the recipe tree."""
    seen = set() if seen is None else seen
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        args = typing.get_args(hint) or (hint,)
        for arg in args:
            inner = typing.get_args(arg) or (arg,)
            for kind in inner:
                if dataclasses.is_dataclass(kind) and kind not in seen:
                    seen.add(kind)
                    yield from _numeric_fields(kind, seen)
        if any(a in (int, float) for a in args):
            yield cls, f.name


# Numbers that may take any finite value (a bonus or a weight can be any size or sign), or
# that their own dataclass checks in __post_init__ (FrameOptions, SynthSizes' fractions).
UNBOUNDED = {"TemporalConfig.alpha", "LengthBonusConfig.omega", "SynthSizes.video_fraction",
             "SynthSizes.sft_error_rate", "SynthSizes.rl_shortcut", "SynthSizes.sft_confusion_rate"}


def test_every_number_in_the_recipe_tree_has_a_rule():
    """A new numeric field needs a decision: a rule in VALUE_RULES, or a reason to be free."""
    missing = []
    for cls, name in _numeric_fields(Recipe):
        if cls.__name__ == "FrameOptions" or f"{cls.__name__}.{name}" in UNBOUNDED:
            continue
        if not any(name in VALUE_RULES.get(k, {}) for k in cls.__mro__):
            missing.append(f"{cls.__name__}.{name}")
    assert not missing


BAD_SETS = [
    ("rl.x=[1,", "--set 'rl.x=[1,': the value '[1,' is not valid YAML"),
    ("noequals", "--set 'noequals': expected KEY=VALUE"),
    ("=3", "--set '=3': expected KEY=VALUE"),
    ("rl..max_steps=3", "--set 'rl..max_steps=3': expected KEY=VALUE"),
    ("rl.lerning_rate=1",
     "--set 'rl.lerning_rate=1': rl.lerning_rate: unknown key (did you mean 'learning_rate'?)"),
    ("rl.temporal.alpah=1", "--set 'rl.temporal.alpah=1': rl.temporal.alpah: unknown key"),
    ("rl.learning_rate=-1", "rl.learning_rate: must be > 0, got -1.0 (from the override "
                            "rl.learning_rate=-1)"),
    ("rl.beta=.nan", "rl.beta: must be a finite number, got nan"),
    ("rl.max_steps=" + "[" * 3000, "is not valid YAML (nested too deeply to read)"),
]


@pytest.mark.parametrize(("item", "message"), BAD_SETS, ids=[i[:24] for i, _ in BAD_SETS])
def test_bad_set_values_exit_2_with_one_line(item, message, tmp_path, capsys):
    rc = main(["train", "rl", "--recipe", "tiny-cpu", "--out", str(tmp_path / "rl"),
               "--sft", str(tmp_path / "sft"), "--frames", str(tmp_path / "f"), "--set", item])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("vlmrl: error: ") and err.count("\n") == 1, err
    assert message in err
    assert not (tmp_path / "rl").exists()  # refused before anything was written


def test_set_reaches_free_form_mappings():
    from vlmrl.cli.options import assignments

    assert assignments(["rl.trainer_kwargs.use_cpu=true", "data.benchmarks.x.annotations=a.json"],
                        "--set") == {"rl": {"trainer_kwargs": {"use_cpu": True}},
                                     "data": {"benchmarks": {"x": {"annotations": "a.json"}}}}
    assert assignments(["run=a=b"], "--tracking") == {"run": "a=b"}  # not a recipe key


def test_a_recipe_file_nested_too_deeply_is_invalid_yaml_not_a_traceback(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("rl: " + "[" * 3000)
    with pytest.raises(RecipeError, match=r"deep\.yaml: invalid YAML: nested too deeply to read"):
        load_recipe(path)


def test_plain_grpo_batches_need_only_trl_global_check():
    """Only group-level features keep a prompt group on one device: plain GRPO with 4 rows
    per device and G = 8 is valid (TRL checks the global batch), T-GRPO with it is not."""
    plain = load_recipe("tiny-cpu", {"rl": {"algorithm": "grpo", "per_device_train_batch_size": 4}})
    assert plain.rl.per_device_train_batch_size == 4
    with pytest.raises(RecipeError, match=r"\(4\) must be a multiple of num_generations \(8\)"):
        load_recipe("tiny-cpu", {"rl": {"algorithm": "t_grpo", "per_device_train_batch_size": 4}})


def test_rollout_settings_are_checked_when_the_recipe_loads():
    """vLLM rollout settings that cannot work are refused before anything runs."""
    vllm = {"engine": "vllm"}
    with pytest.raises(RecipeError, match=r"mode = server needs rl.rollout.server_url"):
        load_recipe("tiny-cpu", {"rl": {"rollout": {**vllm, "mode": "server"}}})
    with pytest.raises(RecipeError, match=r"not reg_grpo's regression"):
        load_recipe("tiny-cpu", {"rl": {"algorithm": "reg_grpo", "rollout": {
            **vllm, "importance_sampling": "token_truncate"}}})
    with pytest.raises(RecipeError, match=r"rl.rollout.importance_sampling_max: must be > 1"):
        load_recipe("tiny-cpu", {"rl": {"rollout": {**vllm, "importance_sampling_max": 1.0}}})
    with pytest.raises(RecipeError, match=r"importance_sampling_min: must be in \[0, 1\), got 1.0"):
        load_recipe("tiny-cpu", {"rl": {"rollout": {**vllm, "importance_sampling_min": 1.0}}})
    server = {**vllm, "mode": "server", "server_url": "http://127.0.0.1:8000"}
    with pytest.raises(RecipeError, match=r"server_url is for mode = server"):
        load_recipe("tiny-cpu", {"rl": {"rollout": {**vllm, "server_url": "http://127.0.0.1:8000"}}})
    with pytest.raises(RecipeError, match=r"vllm_kwargs configure a colocated engine"):
        load_recipe("tiny-cpu", {"rl": {"rollout": {**server, "vllm_kwargs": {"mrope": "vllm"}}}})
    # vLLM's log-probs are of the top-p-filtered distribution: per sequence the ratio would
    # be a product of kept masses
    with pytest.raises(RecipeError, match=r"sequence_\* with top_p < 1 .* use a token_\* mode"):
        load_recipe("tiny-cpu", {"rl": {"top_p": 0.95, "rollout": {
            **vllm, "importance_sampling": "sequence_truncate"}}})
    with pytest.raises(RecipeError, match=r"vespo computes sequence weights itself"):
        load_recipe("tiny-cpu", {"rl": {"algorithm": "grpo", "loss_type": "vespo", "rollout": {
            **vllm, "importance_sampling": "sequence_mask"}}})
    with pytest.raises(RecipeError, match=r"vllm_importance_sampling_mode.*rl.rollout"):
        load_recipe("tiny-cpu", {"rl": {"trainer_kwargs": {"vllm_importance_sampling_mode": "token_mask"}}})
    with pytest.raises(RecipeError, match=r"rl.rollout.importance_sampling"):
        load_recipe("tiny-cpu", {"rl": {"rollout": {**vllm, "importance_sampling": "tokens"}}})
    served = load_recipe("tiny-cpu", {"rl": {"rollout": {
        **vllm, "mode": "server", "server_url": "http://127.0.0.1:8000",
        "importance_sampling": "sequence_mask", "importance_sampling_min": 0.5}}}).rl.rollout
    assert (served.mode, served.accepts_importance_sampling) == ("server", True)
    # settings of vLLM rollouts do nothing with generate: refused rather than ignored
    with pytest.raises(RecipeError, match=r"settings of vLLM rollouts"):
        load_recipe("tiny-cpu", {"rl": {"rollout": {"importance_sampling": "token_truncate"}}})
