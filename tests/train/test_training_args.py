"""One definition per rule: the trainers' shared TrainingArguments, prompt and eval defaults."""

import dataclasses

from vlmrl.eval.runner import DecodingSettings, GenerationSettings
from vlmrl.recipes import EvalSection, Recipe, load_recipe
from vlmrl.train.prompts import PromptConfig
from vlmrl.train.rl_config import VLLM_TRAINER_KWARGS, RLConfig
from vlmrl.train.sft import SFTTrainConfig
from vlmrl.train.training_args import (
    RESERVED_SFT_KWARGS,
    RESERVED_TRAINER_KWARGS,
    SHARED_TRAINING_ARGS,
    TrainingSettings,
)

# Non-default values for every shared field (bf16 stays off: the tests run on CPU).
SAME = dict(learning_rate=3e-4, lr_scheduler_type="constant", warmup_steps=5, weight_decay=0.1,
            max_grad_norm=2.5, per_device_train_batch_size=16, gradient_accumulation_steps=2,
            num_train_epochs=3.0, max_steps=40, seed=7, gradient_checkpointing=True,
            logging_steps=3, save_strategy="steps", save_steps=20, save_total_limit=2,
            report_to="none")


def test_sft_and_rl_training_arguments_agree_on_the_shared_fields(tmp_path):
    sft = SFTTrainConfig(**SAME).to_trl(tmp_path)
    rl = RLConfig(**SAME).to_trl(tmp_path)
    for name in (*SHARED_TRAINING_ARGS, "output_dir", "activation_checkpointing",
                 "remove_unused_columns"):
        assert getattr(sft, name) == getattr(rl, name), name
    for name, value in SAME.items():
        if name in SHARED_TRAINING_ARGS and name != "report_to":  # TRL: "none" -> []
            assert getattr(rl, name) == value, name  # each reaches TRL under its own name
    assert rl.activation_checkpointing and not rl.remove_unused_columns


def test_shared_fields_are_declared_once_and_reserved_keys_are_what_vlmrl_sets(tmp_path):
    shared = {f.name for f in dataclasses.fields(TrainingSettings)}
    assert set(SHARED_TRAINING_ARGS) <= shared
    for config in (SFTTrainConfig, RLConfig):  # the trainers add no TrainingArguments of their own
        assert not set(SHARED_TRAINING_ARGS) - {f.name for f in dataclasses.fields(config)}
    # every reserved key is one vlmrl sets in to_trl (and no shared field is reserved)
    sft, rl = SFTTrainConfig().to_trl(tmp_path), RLConfig().to_trl(tmp_path)
    for args, reserved in ((sft, RESERVED_SFT_KWARGS), (rl, RESERVED_TRAINER_KWARGS)):
        assert all(hasattr(args, key) for key in reserved)
        assert not set(reserved) & shared
    assert set(RESERVED_TRAINER_KWARGS) < set(RESERVED_SFT_KWARGS)
    # TRL's own vLLM settings are rl.rollout's: each is a real GRPOConfig field
    assert RLConfig().reserved_trainer_kwargs() == {**RESERVED_TRAINER_KWARGS, **VLLM_TRAINER_KWARGS}
    assert all(hasattr(rl, key) for key in VLLM_TRAINER_KWARGS)
    grouped = RLConfig(algorithm="reg_grpo")  # whole prompt groups per loss call
    extra = set(grouped.reserved_trainer_kwargs()) - set(RLConfig().reserved_trainer_kwargs())
    assert extra == {"steps_per_generation"} and grouped.to_trl(tmp_path).steps_per_generation == 1
    assert (sft.max_length, sft.completion_only_loss, sft.dataset_kwargs) == (
        None, True, {"skip_prepare_dataset": True})


def test_library_and_recipe_default_prompts_agree():
    """RLConfig() built directly prompts as a recipe that sets no prompt does."""
    plain = load_recipe("video-r1-7b")  # sets no prompt
    assert RLConfig().prompt == SFTTrainConfig().prompt == PromptConfig()
    assert plain.rl.prompt == plain.sft.prompt == Recipe().rl.prompt == RLConfig().prompt
    demo = load_recipe("tiny-cpu")  # its own short prompt, the same for SFT, RL and evaluation
    assert demo.sft.prompt == demo.rl.prompt != RLConfig().prompt


def test_recipe_eval_section_is_built_on_the_runner_decoding_settings():
    decoding = {f.name for f in dataclasses.fields(DecodingSettings)}
    recipe_only = {f.name for f in dataclasses.fields(EvalSection)} - decoding
    assert recipe_only == {"benchmarks", "headroom_k", "headroom_questions"}
    # documented defaults: a recipe evaluates as Video-R1 does, the library greedily
    e = EvalSection()
    assert (e.do_sample, e.temperature, e.top_p, e.max_new_tokens) == (True, 0.1, 0.001, 1024)
    assert not GenerationSettings().do_sample
    gen = load_recipe("tiny-cpu").eval.generation(seed=3)
    assert gen == GenerationSettings(max_new_tokens=64, do_sample=False, temperature=0.1,
                                     top_p=0.001, batch_size=64, seed=3)
