"""The shipped accelerate configs (configs/accelerate/) and the recipes' launch sections.

Issue 16, item 2: configs/video-r1-7b.yaml said "accelerate launch on 4 GPUs" with nothing
to launch it with. Each config here is read by accelerate's own loader and launch-argument
code, the FSDP wrap classes are looked up in a real Qwen2.5-VL model, and the DeepSpeed
files are filled the way the Trainer fills them for a recipe and then validated by
DeepSpeed's own config classes (when deepspeed is installed). The published recipes'
batches are checked against the papers' numbers (METHODS.md).
"""

import argparse
import copy
import dataclasses
import json
import re
import socket
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType

from vlmrl.recipes import (
    ACCELERATE_DIR,
    LaunchSettings,
    Recipe,
    accelerate_config_names,
    load_recipe,
    recipe_names,
)
from vlmrl.train.config_io import ConfigError

# name -> (distributed type, ZeRO stage or None)
CONFIGS = {
    "ddp": (DistributedType.MULTI_GPU, None),
    "fsdp": (DistributedType.FSDP, None),
    "zero2": (DistributedType.DEEPSPEED, 2),
    "zero3": (DistributedType.DEEPSPEED, 3),
    "zero3_offload": (DistributedType.DEEPSPEED, 3),
}
DEEPSPEED = sorted(n for n, (kind, _) in CONFIGS.items() if kind == DistributedType.DEEPSPEED)
GPU_RECIPES = sorted(n for n in recipe_names() if load_recipe(n).model.path is not None)

# The papers' batches, per optimizer step, from /work/shared/METHODS.md (section 2,
# "Training recipe (Qwen2.5-VL-7B)"):
#   "SFT: 1 epoch on the 165k CoT data, lr 1e-6, effective batch 8"           -> sft: 8 samples
#   "batch 1 prompt per GPU on 4 GPUs, about 1.2k steps ..., DeepSpeed ZeRO-3"
#                                   -> rl: 4 prompts x G = 8 completions = 32, on 4 GPUs, zero3
# recipe -> {"gpus": n, "zero": config, "sft": samples, "rl": completions}
PUBLISHED = {
    "video-r1-7b": {"gpus": 4, "zero": "zero3", "sft": 8, "rl": 4 * 8},
}
# METHODS.md gives no GPU count or batch size for these (sections 3-5): the recipes' launch
# sections are ours and say so in their comments.
UNPUBLISHED = {"deepvideo-r1", "visual-rft-detection", "vlm-r1-ovd"}
# Recipes on a ZeRO-3 config without gradient checkpointing, and why (none today).
ZERO3_WITHOUT_CHECKPOINTING: dict[str, str] = {}


def parse_launch(config: str, num_processes: int):
    """`accelerate launch <our args> train.py`, parsed and completed by accelerate's own code:
    (arguments, the config file's values, whether mixed_precision came from the file)."""
    argv = [*LaunchSettings(config, num_processes).accelerate_args(), "train.py"]
    return _validate_launch_command(launch_command_parser().parse_args(argv))


def launch_args(config: str, num_processes: int) -> argparse.Namespace:
    return parse_launch(config, num_processes)[0]


def launch_env(config: str, num_processes: int) -> dict[str, str]:
    """The environment `accelerate launch` gives each process (what the plugins read), built
    as accelerate's launch_command builds it."""
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args, defaults, mixed_precision_from_file = parse_launch(config, num_processes)
    if args.use_deepspeed:  # as in accelerate.commands.launch.launch_command
        fields = list(defaults.deepspeed_config) + ["mixed_precision"] * mixed_precision_from_file
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    return {k: v for k, v in env.items() if k.startswith(("ACCELERATE_", "FSDP_"))}


def test_the_shipped_configs_are_the_five_named():
    assert accelerate_config_names() == sorted(CONFIGS)
    assert set(recipe_names()).isdisjoint(accelerate_config_names())  # not taken for recipes


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_loads_with_accelerates_loader(name):
    path = ACCELERATE_DIR / f"{name}.yaml"
    config = load_config_from_file(str(path))
    assert isinstance(config, ClusterConfig) and config == ClusterConfig.from_yaml_file(str(path))
    assert config.distributed_type == CONFIGS[name][0]
    assert config.num_processes >= 2 and config.num_machines == 1 and not config.use_cpu
    head = "".join(path.read_text().splitlines(keepends=True)[:8])
    assert "--num_processes" in head and "overrides" in head  # the default is only a default


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_num_processes_on_the_command_line_overrides_the_file(name):
    args = launch_args(name, 3)
    assert args.num_processes == 3 != load_config_from_file(str(ACCELERATE_DIR / f"{name}.yaml")).num_processes
    assert (args.use_deepspeed, args.use_fsdp, args.multi_gpu) == (
        CONFIGS[name][0] == DistributedType.DEEPSPEED, CONFIGS[name][0] == DistributedType.FSDP,
        CONFIGS[name][0] == DistributedType.MULTI_GPU)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_nested_key_is_an_accelerate_launch_option(name):
    """accelerate copies fsdp_config / deepspeed_config keys onto its launch arguments without
    checking them: a misspelt key would be ignored silently."""
    options = vars(launch_command_parser().parse_args(["train.py"]))
    config = load_config_from_file(str(ACCELERATE_DIR / f"{name}.yaml"))
    nested = [*(config.fsdp_config or {}), *(config.deepspeed_config or {})]
    assert nested or name == "ddp"
    assert [key for key in nested if key not in options] == []


def test_fsdp_plugin_full_shard_full_state_dict_and_wraps_qwen2_5_vl_blocks(monkeypatch, tmp_path):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from torch.distributed.fsdp import ShardingStrategy, StateDictType
    from transformers import Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl

    from vlmrl.models.tiny import TinyModelSpec, build_config, build_tokenizer

    env = launch_env("fsdp", 4)
    # GPU-only settings: the plugin refuses sync_module_states (which cpu_ram_efficient_loading
    # needs) on a machine without an accelerator, so they are checked in the launch environment
    # and turned off for building the plugin here; everything else is the config's own
    assert env["FSDP_SYNC_MODULE_STATES"] == env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true"
    env.update(FSDP_SYNC_MODULE_STATES="false", FSDP_CPU_RAM_EFFICIENT_LOADING="false")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.use_orig_params
    assert plugin.fsdp_version == 1
    assert plugin.sharding_strategy == ShardingStrategy.FULL_SHARD
    assert plugin.state_dict_type == StateDictType.FULL_STATE_DICT
    names = plugin.transformer_cls_names_to_wrap
    assert names == ["Qwen2_5_VLDecoderLayer", "Qwen2_5_VLVisionBlock"]
    assert all(hasattr(modeling_qwen2_5_vl, n) for n in names)
    assert set(names) == set(Qwen2_5_VLForConditionalGeneration._no_split_modules)
    # accelerate looks each name up in the model it wraps: a wrong name raises here
    spec = TinyModelSpec()
    model = Qwen2_5_VLForConditionalGeneration(build_config(build_tokenizer(["a b c"], spec), spec))
    plugin.set_auto_wrap_policy(model)
    wrapped = plugin.auto_wrap_policy.keywords["transformer_layer_cls"]
    assert {cls.__name__ for cls in wrapped} == set(names)


@pytest.mark.parametrize("name", DEEPSPEED)
def test_deepspeed_plugin_reads_the_json_from_any_directory(name, monkeypatch, tmp_path):
    """accelerate's DeepSpeedPlugin, built from the launch environment, accepts the file
    (it refuses mixed_precision, zero_stage, ... in the YAML next to a JSON file) and reads
    the JSON through the absolute path accelerate_args gives, from another directory."""
    from accelerate.utils import DeepSpeedPlugin

    env = launch_env(name, 4)
    assert Path(env["ACCELERATE_DEEPSPEED_CONFIG_FILE"]).is_absolute()
    monkeypatch.chdir(tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    plugin = DeepSpeedPlugin()
    plugin.set_mixed_precision("bf16")
    assert plugin.zero_stage == CONFIGS[name][1]
    assert plugin.zero3_init_flag == (CONFIGS[name][1] == 3)
    assert plugin.deepspeed_config["bf16"]["enabled"] is True
    offload = plugin.deepspeed_config["zero_optimization"].get("offload_param", {}).get("device")
    assert (offload == "cpu") == name.endswith("offload")


def test_a_deepspeed_yaml_may_not_also_set_mixed_precision(monkeypatch, tmp_path):
    """The rule the DeepSpeed YAMLs follow (why they have no mixed_precision key) is real."""
    from accelerate.utils import DeepSpeedPlugin

    config = yaml.safe_load((ACCELERATE_DIR / "zero2.yaml").read_text())
    config["deepspeed_config"]["deepspeed_config_file"] = str(ACCELERATE_DIR / "zero2.json")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**config, "mixed_precision": "bf16"}))
    for key, value in launch_env(str(bad), 2).items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match="will be ignored"):
        DeepSpeedPlugin()


class _Args:
    """A recipe's real TRL config, as the Trainer sees it on `world_size` processes."""

    def __init__(self, trl_config, world_size):
        self._config, self.world_size = trl_config, world_size

    def __getattr__(self, name):
        return getattr(self._config, name)


def filled_deepspeed_config(name: str, trl_config, world_size: int, steps: int = 100) -> dict:
    """The DeepSpeed dict after the Trainer has filled its "auto" values from `trl_config`
    (transformers' HfTrainerDeepSpeedConfig, both stages: arguments, then model and steps)."""
    from transformers import Qwen2_5_VLConfig
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    raw = json.loads((ACCELERATE_DIR / f"{name}.json").read_text())
    hf = HfTrainerDeepSpeedConfig(copy.deepcopy(raw))
    args = _Args(trl_config, world_size)
    hf.trainer_config_process(args)
    hf.trainer_config_finalize(args, types.SimpleNamespace(config=Qwen2_5_VLConfig()), steps)
    return hf.config


def _autos(value, path=""):
    if isinstance(value, dict):
        return [a for k, v in value.items() for a in _autos(v, f"{path}.{k}".lstrip("."))]
    return [path] if value == "auto" else []


def trl_configs(recipe: Recipe, tmp_path) -> dict:
    """The recipe's TRL configs (built on the CPU: no model is loaded)."""
    return {section: dataclasses.replace(cfg, trainer_kwargs={**cfg.trainer_kwargs, "use_cpu": True})
            .to_trl(tmp_path / section)
            for section, cfg in (("sft", recipe.sft), ("rl", recipe.rl)) if cfg is not None}


def validate_with_deepspeed(config: dict, world_size: int):
    """DeepSpeed's own config classes (pydantic, extra keys forbidden in zero_optimization),
    including its check train_batch_size = micro batch x accumulation x world size."""
    from deepspeed.runtime import config as ds_config  # make install puts it in the venv

    class DataParallel:  # the data-parallel group DeepSpeed would see
        @staticmethod
        def get_data_parallel_world_size():
            return world_size

    original = ds_config.dist.get_rank
    ds_config.dist.get_rank = lambda *a, **k: 0
    try:
        return ds_config.DeepSpeedConfig(copy.deepcopy(config), mpu=DataParallel())
    finally:
        ds_config.dist.get_rank = original


@pytest.mark.parametrize("name", DEEPSPEED)
def test_deepspeed_json_is_valid_for_deepspeed_once_filled(name, tmp_path):
    trl = trl_configs(load_recipe("video-r1-7b"), tmp_path)["rl"]
    config = filled_deepspeed_config(name, trl, world_size=4)
    assert _autos(config) == []  # the Trainer fills every "auto"
    ds = validate_with_deepspeed(config, world_size=4)
    assert ds.zero_optimization_stage == CONFIGS[name][1]
    assert (ds.train_batch_size, ds.train_micro_batch_size_per_gpu,
            ds.gradient_accumulation_steps) == (4 * 8 * 1, 8, 1)
    assert ds.bfloat16_config.enabled and ds.gradient_clipping == 5.0
    if CONFIGS[name][1] == 3:  # one ordinary checkpoint at save time
        assert ds.zero_config.gather_16bit_weights_on_model_save


def test_deepspeed_rejects_a_misspelt_zero_key(tmp_path):
    """validate_with_deepspeed can fail: a typo in zero_optimization is refused."""
    trl = trl_configs(load_recipe("video-r1-7b"), tmp_path)["rl"]
    config = filled_deepspeed_config("zero3", trl, world_size=4)
    config["zero_optimization"]["overlap_comms"] = True
    with pytest.raises(Exception, match="overlap_comms"):
        validate_with_deepspeed(config, world_size=4)


def test_every_gpu_recipe_is_checked_against_the_papers_or_marked_as_ours():
    assert set(GPU_RECIPES) == set(PUBLISHED) | UNPUBLISHED
    assert not set(PUBLISHED) & UNPUBLISHED


@pytest.mark.parametrize("name", recipe_names())
def test_recipe_launch_config_exists_and_is_accepted(name):
    launch = load_recipe(name).launch
    if name not in GPU_RECIPES:
        assert launch == LaunchSettings()  # one process, no accelerate
        return
    assert launch.config_file().is_file() and launch.accelerate_config in CONFIGS
    assert launch.num_processes >= 2 and launch.gpu
    assert launch_args(launch.accelerate_config, launch.num_processes).num_processes == launch.num_processes


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_batches_are_the_papers(name, tmp_path):
    recipe, paper = load_recipe(name), PUBLISHED[name]
    n = recipe.launch.num_processes
    assert (n, recipe.launch.accelerate_config) == (paper["gpus"], paper["zero"])
    for section in ("sft", "rl"):
        cfg = getattr(recipe, section)
        assert n * cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps == paper[section]
    # the same numbers reach DeepSpeed through the Trainer's "auto" values
    for section, trl in trl_configs(recipe, tmp_path).items():
        filled = filled_deepspeed_config(recipe.launch.accelerate_config, trl, world_size=n)
        assert filled["train_batch_size"] == paper[section], section
    assert recipe.rl.num_generations == 8 and paper["rl"] == n * recipe.rl.num_generations  # 1 prompt per GPU


@pytest.mark.parametrize("name", recipe_names())
def test_rl_generation_batch_holds_whole_groups(name):
    """TRL samples processes x per-device batch x steps_per_generation completions at a time,
    in groups of G."""
    recipe = load_recipe(name)
    rl = recipe.rl
    generation_batch = recipe.launch.num_processes * rl.per_device_train_batch_size * rl.steps_per_generation
    assert generation_batch % rl.num_generations == 0, (generation_batch, rl.num_generations)


@pytest.mark.parametrize("name", recipe_names())
def test_zero3_only_with_gradient_checkpointing(name):
    """Sharded weights are gathered layer by layer; without checkpointing the activations of
    a whole ~2k-token video sequence stay alive, and the memory ZeRO-3 saves is spent again."""
    recipe = load_recipe(name)
    if (recipe.launch.accelerate_config or "").startswith("zero3") and name not in ZERO3_WITHOUT_CHECKPOINTING:
        sections = [s for s in (recipe.sft, recipe.rl) if s is not None]
        assert all(s.gradient_checkpointing for s in sections)


def test_launch_section_is_validated():
    base = {"data": {"synthetic": {}}, "model": {"tiny": {}}}
    with pytest.raises(ConfigError) as err:
        Recipe.from_dict({**base, "launch": {"accelerate_config": "zero4"}})
    assert err.value.path == "launch.accelerate_config" and "zero3_offload" in err.value.message
    with pytest.raises(ConfigError) as err:
        Recipe.from_dict({**base, "launch": {"num_processes": 4}})
    assert err.value.path == "launch.accelerate_config" and "num_processes = 4" in err.value.message
    with pytest.raises(ConfigError) as err:
        Recipe.from_dict({**base, "launch": {"num_processes": 0}})
    assert err.value.path == "launch.num_processes"
    # a path is taken as given (it may only exist where the run starts) and not rewritten
    recipe = Recipe.from_dict({**base, "launch": {"accelerate_config": "my/zero3.yaml", "num_processes": 2}})
    assert recipe.launch.accelerate_args() == ["--config_file", str(Path("my/zero3.yaml").resolve()),
                                               "--num_processes", "2"]


def test_ddp_config_starts_two_processes_in_one_group(tmp_path):
    """`accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 2` really
    starts two processes that form one gloo group on a machine without GPUs (the trainers'
    use_cpu builds the state the same way)."""
    script = tmp_path / "world.py"
    script.write_text(textwrap.dedent("""
        import torch, torch.distributed as dist
        from accelerate import PartialState
        state = PartialState(cpu=True)
        total = torch.tensor([state.process_index + 1])
        dist.all_reduce(total)
        print(f"rank {state.process_index} world {state.num_processes} sum {int(total)}", flush=True)
        state.destroy_process_group()  # else gloo's threads may abort the exit (SIGABRT)
    """))
    accelerate = Path(sys.executable).with_name("accelerate")
    with socket.socket() as sock:  # a free port: never 29500, which another run may hold
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    run = subprocess.run([str(accelerate), "launch", *LaunchSettings("ddp", 2).accelerate_args(),
                          "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
                          str(script)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    # (the two processes' lines may interleave)
    reports = sorted(re.findall(r"rank \d+ world \d+ sum \d+", run.stdout))
    assert reports == ["rank 0 world 2 sum 3", "rank 1 world 2 sum 3"]
