"""Recipes: one YAML file names everything a run needs, validated when it is loaded.

Top-level keys (every section optional except where noted; defaults come from the
dataclasses below and from the trainer configs, which are the single source of truth):

    name, description, seed        seed also seeds sft and rl unless they set their own
    data      synthetic: {seed, sizes: {sft, rl, bench, video_fraction}}    (the demo)
              or sft / rl: {annotations, media_root}; benchmarks: {name: {annotations, media_root}}
    frames    train / eval: FrameOptions fields (vlmrl.data.frames)
    model     tiny: TinyModelSpec fields (build the demo model) or path: a local checkpoint
              directory; dtype, attn_implementation, device
    sft       SFTTrainConfig fields (vlmrl.train.sft); null: RL starts from the base model
              (the SFT stage then only records a checkpoint linking to the base)
    rl        RLConfig fields (vlmrl.train.rl_config): algorithm, rewards, temporal, ...
    eval      EvalSection fields: benchmarks and decoding settings
    launch    LaunchSettings fields: the accelerate config and process (GPU) count the batch
              sizes were written for (default: one process, no accelerate config)

Relative paths (annotations, media roots, model.path) are relative to the working
directory of the run. A bad key or value raises RecipeError naming the file and the key
path, e.g. ``configs/x.yaml: rl.temporal.alpha: expected a number, got 'x'``. Values are
checked when the recipe is loaded, not when a trainer first uses them: every number must
be finite and meet its bound in `VALUE_RULES` (``rl.learning_rate: must be > 0, got
-1.0``), an RL batch must hold whole groups of G completions, and `trainer_kwargs` keys
must be real fields of TRL's SFTConfig / GRPOConfig that the recipe does not set elsewhere.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vlmrl.data.frames import FrameOptions
from vlmrl.data.synth import SynthSizes
from vlmrl.eval.runner import DecodingSettings
from vlmrl.hashing import sha256_json
from vlmrl.models.tiny import TinyModelSpec
from vlmrl.train.config_io import (
    ConfigError,
    Rule,
    at_least,
    between,
    check_trainer_kwargs,
    config_from_dict,
    greater_than,
    one_of,
)
from vlmrl.train.rl_config import (
    AugmentConfig,
    LengthBonusConfig,
    RegressionConfig,
    RLConfig,
    RolloutConfig,
    TemporalConfig,
)
from vlmrl.train.sft import SFTPhase, SFTTrainConfig
from vlmrl.train.training_args import RESERVED_SFT_KWARGS, RunSettings

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
ACCELERATE_DIR = CONFIG_DIR / "accelerate"  # shipped accelerate configs (ddp, fsdp, zero2, ...)
SYNTHETIC_BENCHMARK = "synthetic"  # the synthetic data's held-out "bench" split


class RecipeError(ValueError):
    """An invalid recipe; the message names the file (when there is one) and the key path."""


@dataclass
class DataSource:
    """An annotation file (Video-R1 record format) and the directory its media paths are under."""

    annotations: str
    media_root: str


@dataclass
class SyntheticData:
    """The embedded demo's generated data (vlmrl.data.synth)."""

    seed: int = 0
    sizes: SynthSizes = field(default_factory=SynthSizes)


@dataclass
class DataSettings:
    """Either `synthetic`, or `sft` and `rl` sources; `benchmarks` adds evaluation sets by name."""

    synthetic: SyntheticData | None = None
    sft: DataSource | None = None
    rl: DataSource | None = None
    benchmarks: dict[str, DataSource] = field(default_factory=dict)


@dataclass
class FrameSettings:
    """Frame sampling for training and for evaluation (Video-R1: 128*28*28 vs 256*28*28 pixels)."""

    train: FrameOptions = field(default_factory=FrameOptions)
    eval: FrameOptions = field(default_factory=lambda: FrameOptions(max_pixels=256 * 28 * 28))


@dataclass
class ModelSettings:
    """The base model: `tiny` (built here) or `path` (a local checkpoint), and how to load it.

    dtype: "float32", "bf16", "fp16" or "auto". attn_implementation: e.g. "sdpa",
    "flash_attention_2" (None: transformers decides). device: "cpu" forces CPU training
    (the trainers' use_cpu); None lets the trainer pick the accelerator. threads: torch
    intra-op threads for training and evaluation (None: torch's default); tiny models on
    a small shared CPU run far faster on one thread than on two contended ones.
    """

    tiny: TinyModelSpec | None = None
    path: str | None = None
    dtype: str = "float32"
    attn_implementation: str | None = None
    device: str | None = None
    threads: int | None = None

    def apply_threads(self) -> None:
        """Set torch's intra-op thread count when the recipe asks for one."""
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)


@dataclass
class LaunchSettings:
    """How the training stages are launched: `accelerate launch` with this config and this many
    processes (one per GPU). The recipe's per-device batch sizes are written for it: the
    effective batch is num_processes x per_device_train_batch_size x gradient_accumulation_steps.

    accelerate_config: the name of a shipped config (``configs/accelerate/<name>.yaml``: ddp,
    fsdp, zero2, zero3, zero3_offload) or the path of an accelerate config file; None: one
    process, no accelerate launch needed. num_processes: passed as ``--num_processes``, which
    overrides the file's default. gpu: the GPU the per-device batch sizes were sized for, in
    words (e.g. "80 GB (A100 / H100)"); a statement for the reader, not checked.
    """

    accelerate_config: str | None = None
    num_processes: int = 1
    gpu: str | None = None

    def config_file(self) -> Path | None:
        """The accelerate config file: a shipped one by name, or the path as given."""
        if self.accelerate_config is None:
            return None
        if _is_name(self.accelerate_config):
            return ACCELERATE_DIR / f"{self.accelerate_config}.yaml"
        return Path(self.accelerate_config)

    def accelerate_args(self) -> list[str]:
        """Arguments for ``accelerate launch`` before the script: the config file and the process
        count, and for a shipped DeepSpeed config its JSON as an absolute path (accelerate reads
        the file's repository-relative path from the directory the run starts in)."""
        path = self.config_file()
        if path is None:
            return ["--num_processes", str(self.num_processes)]
        args = ["--config_file", str(path.resolve()), "--num_processes", str(self.num_processes)]
        if path.parent.resolve() == ACCELERATE_DIR.resolve():
            config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            ds_file = (config.get("deepspeed_config") or {}).get("deepspeed_config_file")
            if ds_file and not Path(ds_file).is_absolute():
                args += ["--deepspeed_config_file", str(CONFIG_DIR.parent / ds_file)]
        return args


def _is_name(value: str) -> bool:
    """A bare config name ("zero3"), not a path ("my/zero3.yaml", "zero3.yaml")."""
    return "/" not in value and os.sep not in value and not Path(value).suffix


def accelerate_config_names() -> list[str]:
    """The accelerate configs shipped in configs/accelerate/."""
    return sorted(p.stem for p in ACCELERATE_DIR.glob("*.yaml"))


@dataclass
class EvalSection(DecodingSettings):
    """Evaluation: which benchmarks, and how answers are decoded (`DecodingSettings`' fields;
    `generation(recipe.seed)` gives the runner's settings).

    A recipe's defaults are Video-R1's evaluation: sampling at temperature 0.1, top_p 0.001
    (greedy in practice), up to 1024 new tokens; the library's own default is greedy.
    """

    benchmarks: list[str] = field(default_factory=lambda: [SYNTHETIC_BENCHMARK])
    do_sample: bool = True
    temperature: float = 0.1
    top_p: float = 0.001
    # RL headroom diagnostic: the SFT model's sampled pass@1 / pass@k on the first
    # `headroom_questions` multiple-choice questions of the RL split (0: off).
    headroom_k: int = 8
    headroom_questions: int = 128


@dataclass
class Recipe:
    """Everything a run needs (see the module docstring for the sections); load_recipe reads one."""

    name: str = ""
    description: str = ""
    seed: int = 0
    data: DataSettings = field(default_factory=DataSettings)
    frames: FrameSettings = field(default_factory=FrameSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    sft: SFTTrainConfig | None = field(default_factory=SFTTrainConfig)  # None: no SFT stage
    rl: RLConfig = field(default_factory=RLConfig)
    eval: EvalSection = field(default_factory=EvalSection)
    launch: LaunchSettings = field(default_factory=LaunchSettings)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recipe:
        """Validate a recipe mapping (raises ConfigError naming the key path)."""
        data = dict(data)
        seed = data.get("seed", 0)
        for section in ("sft", "rl"):  # the recipe seed is the trainers' default seed
            value = data.get(section, {})
            # (a bad one is reported as "seed", not as the trainers' seed it would become)
            if type(seed) is int and SEED.test(seed) and isinstance(value, Mapping):
                data[section] = {"seed": seed, **value}
        recipe = config_from_dict(cls, data, rules=VALUE_RULES)
        recipe._check()
        return recipe

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (lists for tuples): what is hashed and logged as run parameters."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @property
    def sha256(self) -> str:
        """Content hash of the recipe (key order and formatting of the file do not matter)."""
        return sha256_json(self.to_dict())

    def override(self, changes: Mapping[str, Any]) -> Recipe:
        """A new recipe with nested `changes` merged in, validated again."""
        merged = deep_merge(self.to_dict(), changes)
        if "seed" in changes:  # as in a file: a new recipe seed also reseeds the trainers
            for section in ("sft", "rl"):
                if merged[section] is not None and "seed" not in (changes.get(section) or {}):
                    merged[section]["seed"] = changes["seed"]
        return Recipe.from_dict(merged)

    def benchmark_names(self) -> list[str]:
        names = list(self.data.benchmarks)
        return [SYNTHETIC_BENCHMARK, *names] if self.data.synthetic is not None else names

    def _check(self) -> None:
        """Checks that involve more than one field (VALUE_RULES ran as the fields were read)."""
        from transformers.trainer_utils import SchedulerType

        from vlmrl.models.loading import resolve_dtype

        m, d = self.model, self.data
        if m.tiny is not None:
            try:
                m.tiny.validate()
            except ValueError as exc:
                raise ConfigError("model.tiny", str(exc)) from None
        if (m.tiny is None) == (m.path is None):
            raise ConfigError("model", "give exactly one of tiny (build the demo model) or path")
        try:
            resolve_dtype(m.dtype)
        except ValueError as exc:
            raise ConfigError("model.dtype", str(exc)) from None
        if d.synthetic is not None and (d.sft or d.rl):
            raise ConfigError("data", "give either synthetic or sft/rl sources, not both")
        if d.synthetic is None and d.rl is None:
            raise ConfigError("data", "needs synthetic, or an rl source (and sft, unless sft: null)")
        if d.synthetic is None and self.sft is not None and d.sft is None:
            raise ConfigError("data.sft", "required for the SFT stage (or set sft: null)")
        known = self.benchmark_names()
        for i, name in enumerate(self.eval.benchmarks):
            if name not in known:
                raise ConfigError(f"eval.benchmarks[{i}]", f"unknown benchmark {name!r}; "
                                  f"data provides: {', '.join(known) or 'none'}")
        schedulers = [s.value for s in SchedulerType]
        for section in ("sft", "rl"):
            config = getattr(self, section)
            if config is not None and config.lr_scheduler_type not in schedulers:
                raise ConfigError(f"{section}.lr_scheduler_type",
                                  f"expected one of {', '.join(schedulers)}")
        for i, phase in enumerate(self.sft.curriculum if self.sft is not None else []):
            if phase.lr_scheduler_type not in schedulers:
                raise ConfigError(f"sft.curriculum[{i}].lr_scheduler_type",
                                  f"expected one of {', '.join(schedulers)}")
        if self.eval.do_sample and self.eval.temperature == 0:
            raise ConfigError("eval.temperature", "must be > 0 when eval.do_sample is true")
        self._check_launch()
        self._check_trainers()
        self._check_rewards()

    def _check_launch(self) -> None:
        launch = self.launch
        name = launch.accelerate_config
        if name is not None and _is_name(name) and name not in accelerate_config_names():
            raise ConfigError("launch.accelerate_config", f"unknown accelerate config {name!r}; "
                              f"shipped: {', '.join(accelerate_config_names())} (or give a path)")
        if launch.num_processes > 1 and name is None:
            raise ConfigError("launch.accelerate_config", f"needed for num_processes = "
                              f"{launch.num_processes} (e.g. ddp, fsdp, zero2, zero3)")

    def _check_trainers(self) -> None:
        """RL batches hold whole prompt groups; pass-through trainer_kwargs are real TRL fields."""
        from trl import GRPOConfig, SFTConfig

        rl = self.rl
        if rl.length_bonus.l_max < rl.length_bonus.l_min:
            raise ConfigError("rl.length_bonus.l_max", f"must be >= l_min "
                              f"({rl.length_bonus.l_min}), got {rl.length_bonus.l_max}")
        check_trainer_kwargs(rl.trainer_kwargs, GRPOConfig, RLConfig, "rl.trainer_kwargs",
                             rl.reserved_trainer_kwargs())
        # the trainer's own rule (RLConfig.group_layout_problem), here at load time
        if problem := rl.group_layout_problem(rl.per_device_train_batch_size, rl.steps_per_generation):
            raise ConfigError("rl.per_device_train_batch_size", problem)
        if self.sft is not None:
            check_trainer_kwargs(self.sft.trainer_kwargs, SFTConfig, SFTTrainConfig,
                                 "sft.trainer_kwargs", RESERVED_SFT_KWARGS)

    def _check_rewards(self) -> None:
        from vlmrl.rewards import REWARDS, get_reward

        rl = self.rl
        names = [n for n in rl.reward_funcs if isinstance(n, str)]
        for i, name in enumerate(rl.reward_funcs):
            if callable(name):  # a function passed in code, not from a file
                continue
            if not isinstance(name, str) or name not in REWARDS:
                raise ConfigError(f"rl.reward_funcs[{i}]",
                                  f"unknown reward {name!r}; valid: {', '.join(sorted(REWARDS))}")
        for name, params in rl.reward_params.items():
            if name not in names:
                raise ConfigError(f"rl.reward_params.{name}", "not among rl.reward_funcs")
            try:
                get_reward(name, **params)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"rl.reward_params.{name}", str(exc)) from None
        if rl.reward_weights is not None and len(rl.reward_weights) != len(rl.reward_funcs):
            raise ConfigError("rl.reward_weights", f"needs one weight per reward function "
                              f"({len(rl.reward_funcs)}), got {len(rl.reward_weights)}")
        if (rl.temporal_enabled or rl.length_bonus.enabled) and rl.accuracy_reward not in names:
            raise ConfigError("rl.accuracy_reward", f"{rl.accuracy_reward!r} is not among "
                              "rl.reward_funcs; the temporal / length bonuses need it")


def _save_strategies() -> Rule:
    from transformers.trainer_utils import SaveStrategy

    return one_of(s.value for s in SaveStrategy)


POSITIVE, NON_NEGATIVE, FRACTION = greater_than(0), at_least(0), between(0, 1)
PROBABILITY = between(0, 1, open_low=True)  # top_p: 0 would keep no token
SEED = between(0, 2**32 - 1)  # what numpy's and torch's seeding accept
# -1 lets the epochs decide; 0 or another negative count is a typo, not a setting.
STEPS = Rule("-1 (the epochs decide) or >= 1", lambda v: v == -1 or v >= 1)
# The optimisation settings both trainers share (training_args.TrainingSettings).
_OPTIMISATION = {
    "learning_rate": POSITIVE, "num_train_epochs": POSITIVE, "max_steps": STEPS,
    "per_device_train_batch_size": at_least(1), "gradient_accumulation_steps": at_least(1),
    "warmup_steps": NON_NEGATIVE, "weight_decay": NON_NEGATIVE, "max_grad_norm": POSITIVE,
}
#: Value rules for the whole recipe tree, per dataclass (a class's rules also apply to its
#: subclasses); Recipe._check applies them, and every number anywhere must be finite.
VALUE_RULES: dict[type, dict[str, Rule]] = {
    Recipe: {"seed": SEED},
    SyntheticData: {"seed": SEED},
    SynthSizes: {"sft": NON_NEGATIVE, "rl": NON_NEGATIVE, "bench": NON_NEGATIVE},
    # every size, count and scale of the tiny model
    TinyModelSpec: {f.name: POSITIVE for f in dataclasses.fields(TinyModelSpec)
                    if f.type in ("int", "float")},
    ModelSettings: {"threads": at_least(1)},
    LaunchSettings: {"num_processes": at_least(1)},
    RunSettings: {"seed": SEED, "logging_steps": at_least(1), "save_steps": POSITIVE,
                  "save_total_limit": at_least(1), "save_strategy": _save_strategies()},
    SFTTrainConfig: _OPTIMISATION,
    SFTPhase: {"learning_rate": POSITIVE, "max_steps": at_least(1)},
    RLConfig: {**_OPTIMISATION, "num_generations": at_least(2), "max_completion_length": at_least(1),
               "temperature": POSITIVE, "top_p": PROBABILITY, "num_iterations": at_least(1),
               "epsilon": POSITIVE, "epsilon_high": POSITIVE, "beta": NON_NEGATIVE,
               "vision_cache_mb": NON_NEGATIVE},
    TemporalConfig: {"num_shuffled": at_least(1), "mu": NON_NEGATIVE,
                     "correct_threshold": NON_NEGATIVE},
    LengthBonusConfig: {"l_min": NON_NEGATIVE, "l_max": at_least(1), "min_correct": at_least(1),
                        "correct_threshold": NON_NEGATIVE},
    RegressionConfig: {"eps": POSITIVE},
    RolloutConfig: {"check_every": at_least(1), "check_samples": at_least(1),
                    "max_logprob_gap": POSITIVE, "importance_sampling_max": greater_than(1),
                    "importance_sampling_min": Rule("in [0, 1)", lambda v: 0 <= v < 1),
                    "server_timeout": POSITIVE},
    AugmentConfig: {"window": at_least(1), "gain": POSITIVE, "dead_zone": NON_NEGATIVE,
                    "min_history": NON_NEGATIVE, "max_hint_fraction": FRACTION,
                    "max_noise_std": NON_NEGATIVE, "max_mask_prob": FRACTION},
    EvalSection: {"max_new_tokens": at_least(1), "temperature": NON_NEGATIVE,
                   "top_p": PROBABILITY, "batch_size": at_least(1), "headroom_k": at_least(1),
                   "headroom_questions": NON_NEGATIVE},
}


def deep_merge(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `changes` merged in: mappings merge key by key, anything else replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in changes.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class _Loader(yaml.SafeLoader):
    """Safe YAML that reads 1e-6 as a number (YAML 1.1 wants 1.0e-6) and refuses duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str) -> Any:
    """YAML text as Python values, read as recipes are (safe, 1e-6 is a number).

    Raises yaml.YAMLError for anything that is not YAML, including nesting too deep for
    the parser (which would otherwise surface as a RecursionError traceback).
    """
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no arbitrary objects
    except RecursionError:
        raise yaml.YAMLError("nested too deeply to read") from None


def recipe_names() -> list[str]:
    """The recipes shipped in configs/."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def recipe_path(path_or_name: str | os.PathLike[str]) -> Path:
    """A recipe file: an existing path, or the name of one in configs/ ("tiny-cpu")."""
    path = Path(path_or_name)
    if path.is_file():
        return path
    shipped = CONFIG_DIR / f"{path_or_name}.yaml"
    if path.suffix == "" and shipped.is_file():
        return shipped
    raise FileNotFoundError(
        f"no recipe file {path} and no shipped recipe named {str(path_or_name)!r}; "
        f"shipped: {', '.join(recipe_names())}"
    )


def load_recipe(
    path_or_name: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None
) -> Recipe:
    """Load and validate a recipe file; `overrides` (nested mapping) is merged in first."""
    path = recipe_path(path_or_name)
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(data, Mapping):
        raise RecipeError(f"{path}: a recipe must be a mapping of sections, got {data!r}")
    data = deep_merge({"name": path.stem}, data)
    if overrides:
        data = deep_merge(data, overrides)
    try:
        return Recipe.from_dict(data)
    except ConfigError as exc:
        raise RecipeError(f"{path}: {exc}{_blame_override(exc.path, overrides or {})}") from None


def _blame_override(key_path: str, overrides: Mapping[str, Any], prefix: str = "") -> str:
    """" (from the override K=V)" when an override set the key at (or above / below) `key_path`."""
    for key, value in overrides.items():
        where = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            found = _blame_override(key_path, value, where)
            if found:
                return found
        elif key_path == where or key_path.startswith((f"{where}.", f"{where}[")) \
                or where.startswith(f"{key_path}."):
            return f" (from the override {where}={value!r})"
    return ""
