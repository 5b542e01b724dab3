"""Configuration of the GRPO-family trainer: plain dataclasses a YAML recipe can populate.

`RLConfig.algorithm` picks the method; the sub-configs tune its parts:

- "grpo":     TRL's GRPO with any of its loss variants (`loss_type`: grpo, bnpo, dr_grpo,
              dapo, cispo, sapo, luspo, vespo; `scale_rewards`; `epsilon_high`; `beta`;
              `mask_truncated_completions`; `importance_sampling_level`), passed through.
- "t_grpo":   GRPO + Video-R1's temporal reward (see `TemporalConfig`).
- "reg_grpo": DeepVideo-R1's regression loss in place of the clipped surrogate (see
              `RegressionConfig`); combine with `augment` for the full DeepVideo-R1 method.

Independent switches: `dynamic_sampling` (DAPO: drop groups whose advantages are all zero
from the loss batch, logged as dynamic_sampling/kept_group_fraction; with several
processes, each keeps as many groups as the process with the most informative ones,
padding with zero-advantage groups, because TRL's loss metrics gather equal shapes),
`length_bonus` (Video-R1), `augment` (DeepVideo-R1's difficulty-aware augmentation), and
`temporal.enabled` to add the temporal reward to any algorithm.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from trl import GRPOConfig

from vlmrl.train.prompts import PromptConfig
from vlmrl.train.training_args import (
    RESERVED_TRAINER_KWARGS,
    Fixed,
    TrainingSettings,
    training_kwargs,
)

Algorithm = Literal["grpo", "t_grpo", "reg_grpo"]
ALGORITHMS: tuple[str, ...] = get_args(Algorithm)
# TRL 1.16's choices, as Literals so that a recipe typo fails when it is loaded.
LossType = Literal["grpo", "bnpo", "dr_grpo", "dapo", "cispo", "sapo", "luspo", "vespo"]
ScaleRewards = Literal["group", "batch", "none"]
# What to_trl fixes when a loss call needs whole prompt groups (RLConfig.uses_groups_in_loss):
# TRL shuffles a generation batch and splits it into steps_per_generation chunks, which
# would cut prompt groups apart.
FIXED_GROUP_KWARGS = {
    "steps_per_generation": Fixed(1, "1 for reg_grpo and dynamic_sampling (a loss call needs "
                                     "whole prompt groups)"),
}

# TRL's own vLLM settings: its backend sends no videos (refused), and its importance-sampling
# correction is configured by rl.rollout (the trainer sets these from it).
VLLM_TRAINER_KWARGS = {
    key: "vLLM rollouts are configured by rl.rollout (docs/vllm.md)"
    for key in ("use_vllm", "vllm_mode", "vllm_importance_sampling_correction",
                "vllm_importance_sampling_mode", "vllm_importance_sampling_clip_max",
                "vllm_importance_sampling_clip_min")
}


@dataclass
class TemporalConfig:
    """T-GRPO (Video-R1): contrast ordered and shuffled-frame rollouts per video prompt.

    For each video prompt group, `num_shuffled` (G~) extra completions are sampled on the
    same question with the frames in one random non-identity order, in the same
    generation call as the G ordered completions. p / p~ are the mean accuracies of the
    ordered / shuffled completions of that group; if p >= mu * p~, each ordered completion
    with accuracy > correct_threshold gets +alpha. Shuffled completions are scored, never
    trained on; image prompts are untouched.

    enabled: None follows the algorithm ("t_grpo" -> on); True/False forces it.
    num_shuffled: G~; None means G // 2 (Video-R1: G = 8, G~ = 4).
    """

    enabled: bool | None = None
    num_shuffled: int | None = None
    alpha: float = 0.3
    mu: float = 1.0
    correct_threshold: float = 0.1


@dataclass
class RolloutConfig:
    """How rollouts are generated (docs/vllm.md).

    engine: "transformers" (the policy's own `generate`, default) or "vllm"
        (`vlmrl.rollout`, from the environment `make vllm` builds; the policy must come
        from a local checkpoint directory).
    mode: where the vLLM engine runs. "colocate": in the training process (one process).
        "server": in a `vlmrl rollout-serve` process at `server_url`; any number of
        training processes send it their prompts, the main one its weights.
    server_url: the server's address in server mode (e.g. http://127.0.0.1:8000).
    server_timeout: seconds a request to the server may take (a 7B rollout batch is long).
    vision: what vLLM gets for images and videos: "auto" (the trainer's vision embeddings
        when the tower is frozen, else pixels), "embeddings" or "pixels".
    check_every / check_samples / max_logprob_gap: the agreement gate. At the first
        rollout and every `check_every` steps the trainer recomputes the log-probs of
        `check_samples` vLLM completions; a per-token gap above `max_logprob_gap` stops
        the run, naming what can disagree. Prompt ids are checked on every rollout.
    importance_sampling: "off" (default: the gate stops a disagreeing run), or accept the
        gap and correct for it: each token's (or sequence's) loss is weighted by
        pi_trainer / pi_vllm, truncated at `importance_sampling_max` ("*_truncate") or
        zeroed outside [importance_sampling_min, importance_sampling_max] ("*_mask"). TRL's
        vLLM correction, reached here; the gate then logs the gap without stopping.
    importance_sampling_max / importance_sampling_min: the stated bounds of that ratio.
    vllm_kwargs: passed to the engine (`VllmRollout`: e.g. gpu_memory_utilization,
        max_model_len, mrope) in colocate mode.
    """

    engine: Literal["transformers", "vllm"] = "transformers"
    mode: Literal["colocate", "server"] = "colocate"
    server_url: str | None = None
    server_timeout: float = 1800.0
    vision: Literal["auto", "embeddings", "pixels"] = "auto"
    check_every: int = 10
    check_samples: int = 4
    max_logprob_gap: float = 1e-3
    importance_sampling: Literal["off", "token_truncate", "token_mask", "sequence_truncate",
                                 "sequence_mask"] = "off"
    importance_sampling_max: float = 2.0
    importance_sampling_min: float | None = None
    vllm_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.engine != "vllm" and (self.mode != "colocate" or self.importance_sampling != "off"):
            raise ValueError("rl.rollout.mode and importance_sampling are settings of vLLM rollouts: "
                             "set rl.rollout.engine = vllm")
        if self.mode == "server" and not self.server_url:
            raise ValueError("rl.rollout.mode = server needs rl.rollout.server_url "
                             "(the address `vlmrl rollout-serve` listens on)")
        if self.mode == "colocate" and self.server_url:
            raise ValueError("rl.rollout.server_url is for mode = server (the engine is colocated)")
        if self.mode == "server" and self.vllm_kwargs:
            raise ValueError("rl.rollout.vllm_kwargs configure a colocated engine; a server takes "
                             "them on its command line (vlmrl rollout-serve --engine-kwargs)")

    @property
    def accepts_importance_sampling(self) -> bool:
        return self.engine == "vllm" and self.importance_sampling != "off"


@dataclass
class LengthBonusConfig:
    """Video-R1 length reward: when >= min_correct completions of a group are correct
    (accuracy > correct_threshold), each correct one with l_min <= tokens <= l_max gets +omega."""

    enabled: bool = False
    l_min: int = 320
    l_max: int = 512
    omega: float = 0.2
    min_correct: int = 2
    correct_threshold: float = 0.1


@dataclass
class RegressionConfig:
    """Reg-GRPO (DeepVideo-R1): L = mean_i (A_i - A^theta_i)^2 + beta * KL.

    rho_i = log pi_theta(o_i|q) - log pi_old(o_i|q) per sequence, A^theta_i = (rho_i -
    mean_group rho) / sqrt(var_group rho + eps). The paper leaves two choices open:

    sequence_logprob: "sum" of token log-probs or length-normalised "mean".
    eps: variance floor. At an on-policy step rho = 0 (pi_theta = pi_old), so std(rho) = 0;
        sqrt(var + eps) keeps the loss and its gradient finite. It also sets the gradient
        scale there: d A^theta / d rho = 1 / sqrt(eps), so with num_iterations = 1 the update
        is a group-centred policy gradient scaled by 2 / sqrt(eps) (Adam normalises the
        scale; max_grad_norm bounds it).
    loss_scale: "policy" divides the loss by 2 / sqrt(eps), so that the on-policy gradient
        has the policy gradient's scale and `max_grad_norm` clips Reg-GRPO where it clips
        GRPO; "raw" keeps the paper's loss, whose gradient is then clipped at every step
        (measured on the learning self-tests: a question-dependent control reward 0.51 ->
        0.66 in 40 steps with "raw", -> 0.94 unclipped).
    """

    sequence_logprob: Literal["sum", "mean"] = "mean"
    eps: float = 1e-4
    loss_scale: Literal["policy", "raw"] = "policy"


@dataclass
class AugmentConfig:
    """DeepVideo-R1 difficulty-aware augmentation, as a per-prompt controller.

    A replay buffer keeps the last `window` rewards (all completions, all processes). When
    a prompt's group has been scored, dR = mean(buffer) - mean(group rewards): > 0 means too
    hard, < 0 too easy. Each prompt keeps a level in [-1, 1] that accumulates dR
    (level += gain * dR, clipped), so the augmentation that made a prompt balanced stays on
    while it is balanced. The level is applied the next time the prompt is drawn (its
    difficulty is only known after its group is scored):

    - level > 0 (too hard): a hint, the first `max_hint_fraction * level` of the words of the
      row's CoT `process`, is appended to the question (longer for larger dR).
    - level < 0 (too easy): Gaussian noise of std `max_noise_std * |level|` (fraction of the
      pixel range) on every frame, and, for videos, each frame is blacked out with
      probability `max_mask_prob * |level|` (at least one frame is kept).

    |dR| < dead_zone leaves the level unchanged; nothing happens until the buffer holds
    `min_history` rewards.
    """

    enabled: bool = False
    window: int = 100
    gain: float = 1.0
    dead_zone: float = 0.05
    min_history: int = 8
    max_hint_fraction: float = 0.75
    max_noise_std: float = 0.3
    max_mask_prob: float = 0.5


@dataclass
class RLConfig(TrainingSettings):
    """GRPO-family RL hyper-parameters (defaults: Video-R1's T-GRPO recipe, 7B scale).

    Sampling: num_generations (G), max_completion_length, temperature, top_p.
    Optimisation: `TrainingSettings` (Video-R1's RL stage: weight decay 0.01, clipping at
        5); per_device_train_batch_size counts completions per device and step (a multiple
        of G keeps groups on one device, which the group-level features need);
        num_iterations.
    Loss (TRL): loss_type, scale_rewards, epsilon, epsilon_high, beta,
        mask_truncated_completions, importance_sampling_level.
    Rewards: reward_funcs (registry names from vlmrl.rewards, or callables),
        reward_params (per-name bound parameters), reward_weights (per reward function,
        shaping terms excluded), accuracy_reward (the reward whose value is "accuracy" for
        the temporal / length shaping).
    Seed, precision, logging and the trainer's own checkpoints (resume): `RunSettings`.
    rollout: the generation engine and vLLM's agreement gate (RolloutConfig)
    vision_cache_mb: memory bound of the vision-embedding cache
        (vlmrl.models.vision_cache), in MiB on the training device; 0 turns it off. It is
        used only while the vision tower is frozen (``freeze_vision``): the embeddings of a
        video are then computed once and reused by generation and every log-prob forward.
    trainer_kwargs: any other GRPOConfig field, passed through unchanged.
    """

    algorithm: Algorithm = "t_grpo"
    num_generations: int = 8
    max_completion_length: int = 768
    temperature: float = 1.0
    top_p: float = 0.95
    weight_decay: float = 0.01
    max_grad_norm: float = 5.0
    num_iterations: int = 1
    loss_type: LossType = "grpo"
    scale_rewards: ScaleRewards = "group"
    epsilon: float = 0.2
    epsilon_high: float | None = None
    beta: float = 0.04
    mask_truncated_completions: bool = False
    importance_sampling_level: Literal["token", "sequence"] = "token"
    dynamic_sampling: bool = False
    reward_funcs: list[Any] = field(default_factory=lambda: ["accuracy", "format"])
    reward_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    reward_weights: list[float] | None = None
    accuracy_reward: str = "accuracy"
    temporal: TemporalConfig = field(default_factory=TemporalConfig)
    length_bonus: LengthBonusConfig = field(default_factory=LengthBonusConfig)
    regression: RegressionConfig = field(default_factory=RegressionConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    vision_cache_mb: float = 1024.0
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        if self.regression.sequence_logprob not in ("sum", "mean"):
            raise ValueError("regression.sequence_logprob must be 'sum' or 'mean'")
        if self.regression.loss_scale not in ("policy", "raw"):
            raise ValueError("regression.loss_scale must be 'policy' or 'raw'")
        if self.regression.eps <= 0:
            raise ValueError("regression.eps must be > 0")
        if self.algorithm == "reg_grpo" and self.scale_rewards != "group":
            # A^theta is standardised within each group, so the target must be too.
            raise ValueError(
                "reg_grpo regresses group-standardised advantages: use scale_rewards='group'"
            )
        if self.temporal_enabled and self.num_shuffled < 1:
            raise ValueError("T-GRPO needs num_shuffled >= 1")
        if self.rollout.importance_sampling.startswith("sequence") and (
                self.top_p < 1 or self.trainer_kwargs.get("top_k")):
            # vLLM reports the filtered distribution's log-probs, the policy's cover the whole
            # vocabulary: per token the ratio is the kept mass (>= top_p), per sequence its
            # product over hundreds of tokens
            raise ValueError("rl.rollout.importance_sampling = sequence_* with top_p < 1 or top_k "
                             "multiplies each token's kept probability mass over the sequence: use "
                             "a token_* mode")
        if self.loss_type == "vespo" and self.rollout.importance_sampling.startswith("sequence"):
            raise ValueError("loss_type vespo computes sequence weights itself: "
                             "rl.rollout.importance_sampling must be token_truncate or token_mask")
        if self.algorithm == "reg_grpo" and self.rollout.accepts_importance_sampling:
            # the correction weights the clipped surrogate's tokens; the regression loss has none
            raise ValueError("rl.rollout.importance_sampling is defined for the policy-gradient "
                             "losses, not reg_grpo's regression: leave it 'off' (the gate then "
                             "stops a disagreeing run)")

    @property
    def temporal_enabled(self) -> bool:
        if self.temporal.enabled is None:
            return self.algorithm == "t_grpo"
        return self.temporal.enabled

    @property
    def num_shuffled(self) -> int:
        g = self.temporal.num_shuffled
        return self.num_generations // 2 if g is None else g

    @property
    def uses_groups_in_loss(self) -> bool:
        """Features that need a whole prompt group in one loss call (steps_per_generation = 1)."""
        return self.algorithm == "reg_grpo" or self.dynamic_sampling

    @property
    def steps_per_generation(self) -> int:
        """Optimizer steps per generation batch, as the TRL config will have it."""
        if "steps_per_generation" in self.trainer_kwargs:
            return int(self.trainer_kwargs["steps_per_generation"])
        return 1 if self.uses_groups_in_loss else self.gradient_accumulation_steps

    def reserved_trainer_kwargs(self) -> dict[str, str]:
        """The GRPOConfig fields to_trl sets itself (key -> why): not for trainer_kwargs."""
        fixed = FIXED_GROUP_KWARGS if self.uses_groups_in_loss else {}
        return {**RESERVED_TRAINER_KWARGS, **VLLM_TRAINER_KWARGS,
                **{key: item.why for key, item in fixed.items()}}

    def group_layout_problem(self, per_device_batch: int, steps_per_generation: int) -> str | None:
        """Why prompt groups would not stay whole on one device, or None. Only group-level
        features (T-GRPO's shuffled rollouts, augmentation, Reg-GRPO, dynamic sampling)
        need this; plain GRPO only needs TRL's own check of the global batch."""
        group_level = self.temporal_enabled or self.augment.enabled or self.uses_groups_in_loss
        local_rows = per_device_batch * steps_per_generation
        if group_level and local_rows % self.num_generations:
            return (f"per_device_train_batch_size * steps_per_generation ({local_rows}) must be a "
                    f"multiple of num_generations ({self.num_generations}) so that each prompt "
                    "group stays on one device")
        if self.uses_groups_in_loss and steps_per_generation != 1:
            return ("Reg-GRPO and dynamic sampling need whole prompt groups in each loss call: "
                    "set steps_per_generation = 1 (TRL splits a shuffled generation batch otherwise)")
        return None

    def to_trl(self, output_dir: str | os.PathLike) -> GRPOConfig:
        kwargs = dict(
            **training_kwargs(self, output_dir),
            num_generations=self.num_generations,
            max_completion_length=self.max_completion_length,
            temperature=self.temperature,
            top_p=self.top_p,
            num_iterations=self.num_iterations,
            loss_type=self.loss_type,
            scale_rewards=self.scale_rewards,
            epsilon=self.epsilon,
            epsilon_high=self.epsilon_high,
            beta=self.beta,
            mask_truncated_completions=self.mask_truncated_completions,
            importance_sampling_level=self.importance_sampling_level,
            reward_weights=self.reward_weights,
        )
        if self.uses_groups_in_loss:
            kwargs.update({key: item.value for key, item in FIXED_GROUP_KWARGS.items()})
        kwargs.update(self.trainer_kwargs)
        return GRPOConfig(**kwargs)
