"""The GRPO-family trainer: TRL's GRPOTrainer with videos in the loss, T-GRPO, Reg-GRPO,
dynamic sampling and difficulty-aware augmentation.

Why a subclass (TRL 1.16, see METHODS.md "Known gap"): TRL builds the loss-time visual
inputs only from an `images` column, so for a video prompt the log-prob forward sees bare
`<|video_pad|>` embeddings with text positions (training runs, silently wrong), and an
image + video batch crashes. Here every row's visual tensors (images and videos, grids,
frame rates) are encoded once per rollout, used for generation, kept with the row through
TRL's shuffle/split, and injected into every log-prob forward (old, reference, policy)
together with `mm_token_type_ids`, which Qwen2.5-VL needs for its 3D positions.

Overridden TRL hooks and why:

- `_generate_and_score_completions`: builds each row's prompt from the frame-dataset row
  (`vlmrl.train.prompts.build_prompt`, with augmentation), plans T-GRPO's shuffled-frame
  rollouts, then after TRL's rollout/scoring attaches the per-row visual tensors and group
  ids, updates the augmentation state and applies dynamic sampling.
- `_tokenize_prompts`: encodes prompts (ordered + shuffled) with images, videos and frame
  rates in one processor call; TRL's version loses video frame rates and has no hook
  for extra rollouts.
- `_generate_single_turn`: generates the shuffled-frame rollouts in the same `generate`
  call as the ordered ones and sets them aside (scored, never trained on).
- `_calculate_rewards`: adds the group-level shaping terms (temporal bonus from p / p~,
  length bonus) as reward columns before TRL's group normalisation.
- `_get_per_token_logps_and_entropies`: the log-prob forward with the rows' visual tensors.
- `_compute_loss`: selects the rows' visual tensors; Reg-GRPO replaces the clipped loss.
- `_save_checkpoint` / `_load_optimizer_and_scheduler`: our rollout state (shuffle
  generator, augmentation controller) is saved with trainer checkpoints and restored.

TRL's `_prepare_inputs` is kept: it shuffles and splits the generation batch, and our
per-row entries (lists and tensors) follow the rows. Group-level losses therefore need
`steps_per_generation = 1` (checked).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import gather, gather_object
from datasets import Dataset
from transformers import PreTrainedModel, ProcessorMixin
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOConfig, GRPOTrainer

from vlmrl.data.extract import encoded_frames, read_frames
from vlmrl.data.records import family_of
from vlmrl.models.loading import load_model
from vlmrl.models.multimodal import collate_visual_rows, mm_token_types, render_and_encode
from vlmrl.models.saving import save_model_dir
from vlmrl.models.vision_cache import VisionEmbeddingCache, vision_tower
from vlmrl.rewards import get_reward
from vlmrl.rewards.shaping import length_bonus
from vlmrl.train.augment import Augmentation, DifficultyAugmenter
from vlmrl.train.data_wait import DataWaitMixin
from vlmrl.train.groups import (
    group_ids,
    select_informative_groups,
    select_rows,
    zero_advantage_groups,
)
from vlmrl.train.prompts import build_prompt, resolve_prompt
from vlmrl.train.regression import reg_grpo_loss
from vlmrl.train.resume import ConvertedResumeMixin
from vlmrl.train.rl_config import RLConfig
from vlmrl.train.temporal import (
    ShuffledRollout,
    apply_temporal_bonus,
    plan_shuffled_rollouts,
    shuffled_accuracy_table,
)
from vlmrl.train.vllm_generation import RolloutDisagreement

TEMPORAL_COLUMN = "temporal_bonus"
LENGTH_COLUMN = "length_bonus"
RL_STATE = "vlmrl_rl_state_{}.json"  # per process: our rollout state in a trainer checkpoint


class ShapingColumn:
    """A reward "function" that only reserves a column: the trainer fills it per group.

    It returns None (not applicable) so that TRL's per-reward logging and weighting treat
    the column like any other reward; `_calculate_rewards` writes the real values.
    """

    def __init__(self, name: str) -> None:
        self.__name__ = name

    def __call__(self, completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
        return [None] * len(completions)


def _without_media(messages: Any) -> Any:
    if not isinstance(messages, list):
        return messages
    stripped = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = [
                {"type": p["type"]} if p.get("type") in ("image", "video") else p for p in content
            ]
            message = {**message, "content": content}
        stripped.append(message)
    return stripped


@dataclasses.dataclass(frozen=True)
class FrameSource:
    """The train dataset's frames as stored (PNG/JPEG bytes in Arrow) and each row's index.

    The dataloader then yields rows without frames, and a rollout decodes the frames of
    just its rows with the fast reader (`vlmrl.data.extract.read_frames`): no PIL images
    built by `datasets` for every frame of every row the sampler repeats G times.
    """

    encoded: Any
    index: dict[str, int]  # problem_id -> row

    @classmethod
    def split(cls, dataset: Any) -> tuple[Any, FrameSource | None]:
        """(the dataset without its frames column, the frames), or (dataset, None) when the
        rows cannot be told apart by problem_id (then rows keep their decoded frames)."""
        if not isinstance(dataset, Dataset) or not {"frames", "problem_id"} <= set(
            dataset.column_names
        ):
            return dataset, None
        ids = [str(pid) for pid in dataset["problem_id"]]
        if len(set(ids)) != len(ids):
            return dataset, None
        # remove_columns is a view of the same Arrow table: nothing is written anywhere
        source = cls(encoded_frames(dataset), {pid: i for i, pid in enumerate(ids)})
        return dataset.remove_columns("frames"), source

    def frames(self, row: dict[str, Any]) -> np.ndarray:
        return read_frames(self.encoded, self.index[str(row["problem_id"])])

    def fill(self, rows: list[dict[str, Any]]) -> None:
        """Give each row without frames its frames, decoding each problem once: the sampler
        repeats a prompt G times, and the G rows share one (read-only in use) array."""
        decoded: dict[str, np.ndarray] = {}
        for row in rows:
            if "frames" not in row:
                key = str(row["problem_id"])
                if key not in decoded:
                    decoded[key] = self.frames(row)
                row["frames"] = decoded[key]


def resolve_reward_funcs(
    specs: Sequence[str | Callable[..., list[float | None]]],
    params: dict[str, dict[str, Any]] | None = None,
) -> list[Callable[..., list[float | None]]]:
    """Registry names (vlmrl.rewards) -> bound reward functions; callables pass through."""
    params = params or {}
    return [get_reward(s, **params.get(s, {})) if isinstance(s, str) else s for s in specs]


class VideoGRPOTrainer(DataWaitMixin, ConvertedResumeMixin, GRPOTrainer):
    """GRPO / T-GRPO / Reg-GRPO on frame datasets mixing images and videos.

    The train dataset is a frame dataset (vlmrl.data): rows with problem, problem_type,
    options, solution, data_type, frames, ... Prompts are built here, so the dataset needs
    no `prompt` column. Reward functions receive every dataset column.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        reward_funcs: Sequence[Callable[..., list[float | None]]],
        args: GRPOConfig,
        train_dataset: Dataset,
        processing_class: ProcessorMixin,
        rl: RLConfig | None = None,
        eval_dataset: Dataset | None = None,
        callbacks: list[Any] | None = None,
        optimizers: tuple[Any, Any] = (None, None),
        peft_config: Any = None,
    ) -> None:
        self.rl = rl or RLConfig()
        if args.use_vllm:
            raise NotImplementedError(
                "TRL's vLLM backend does not carry videos: use rl.rollout.engine = vllm "
                "(vlmrl's vLLM rollouts, docs/vllm.md)"
            )
        if not isinstance(processing_class, ProcessorMixin):
            raise TypeError(
                "VideoGRPOTrainer needs a multimodal processor (e.g. Qwen2_5_VLProcessor)"
            )
        reward_funcs = list(reward_funcs)
        shaping = []
        if self.rl.temporal_enabled:
            shaping.append(ShapingColumn(TEMPORAL_COLUMN))
        if self.rl.length_bonus.enabled:
            shaping.append(ShapingColumn(LENGTH_COLUMN))
        if args.reward_weights is not None and len(args.reward_weights) == len(reward_funcs):
            args.reward_weights = [*args.reward_weights, *([1.0] * len(shaping))]
        self._forward_visual: list[dict[str, torch.Tensor]] | None = None
        train_dataset, self._frame_source = FrameSource.split(train_dataset)
        self.last_prompts: list[list[dict[str, Any]]] = []  # this process's latest prompts
        self.rows_seen: list[str] = []  # problem ids this process rolled out in training
        self._reset_rollout_state()

        super().__init__(
            model=model,
            reward_funcs=reward_funcs + shaping,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
            peft_config=peft_config,
        )

        self._column = {name: i for i, name in enumerate(self.reward_func_names)}
        self._accuracy_fn = None
        if self.rl.temporal_enabled or self.rl.length_bonus.enabled:
            if self.rl.accuracy_reward not in self._column:
                raise ValueError(
                    f"accuracy_reward {self.rl.accuracy_reward!r} is not among the reward functions "
                    f"{self.reward_func_names}; the temporal / length bonuses need it"
                )
            self._accuracy_fn = self.reward_funcs[self._column[self.rl.accuracy_reward]]
            if not callable(self._accuracy_fn) or isinstance(self._accuracy_fn, torch.nn.Module):
                raise TypeError("the accuracy reward must be a plain (synchronous) function")
        self._check_group_layout()

        config = self.accelerator.unwrap_model(self.model).config
        self._image_token_id = getattr(config, "image_token_id", None)
        self._video_token_id = getattr(config, "video_token_id", None)
        # A sampled placeholder token would not match any visual features in the loss forward.
        suppress = set(self.generation_kwargs.get("suppress_tokens") or [])
        for name in (
            "image_token_id",
            "video_token_id",
            "vision_start_token_id",
            "vision_end_token_id",
        ):
            if getattr(config, name, None) is not None:
                suppress.add(getattr(config, name))
        self.generation_kwargs["suppress_tokens"] = sorted(suppress)
        self.generation_config.suppress_tokens = sorted(suppress)

        seed = args.seed + 7919 * self.accelerator.process_index
        self._shuffle_generator = torch.Generator().manual_seed(seed)
        self._augmenter = (
            DifficultyAugmenter(self.rl.augment, seed) if self.rl.augment.enabled else None
        )
        self.vision_cache = self._attach_vision_cache()
        self._vllm = self._start_vllm() if self.rl.rollout.engine == "vllm" else None

    def _start_vllm(self) -> Any:
        cfg = self.rl.rollout
        if cfg.mode == "colocate" and self.accelerator.num_processes > 1:
            raise ValueError("rl.rollout.mode = colocate runs vLLM inside the one training process: "
                             "with several, serve it (rl.rollout.mode = server, docs/vllm.md)")
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            # the main process sends the weights from its state_dict, whole only without sharding
            raise ValueError("rl.rollout.engine = vllm syncs weights from one process's state_dict: "
                             "not with FSDP or DeepSpeed (use DDP)")
        from vlmrl.train.vllm_generation import VllmGeneration

        generation = VllmGeneration(self.accelerator.unwrap_model(self.model), cfg,
                                    self.args.seed, max_model_len=4096)
        if cfg.accepts_importance_sampling:
            # TRL 1.16's vLLM correction (the policy's old log-probs of every sample, their
            # ratio to the sampling log-probs, truncated or masked, in every token's loss;
            # sampling/* metrics) is keyed on `use_vllm`, which must be False while TRL
            # builds (its own vLLM backend sends no videos). Past construction the flag
            # reaches only that correction: rollouts go through `_generate_single_turn`.
            self.use_vllm = True
            self.vllm_importance_sampling_correction = True
            self.vllm_importance_sampling_mode = cfg.importance_sampling
            self.vllm_importance_sampling_clip_max = cfg.importance_sampling_max
            self.vllm_importance_sampling_clip_min = cfg.importance_sampling_min
        return generation

    def _attach_vision_cache(self) -> VisionEmbeddingCache | None:
        # Attached whenever configured: the cache itself steps aside while the tower trains,
        # so freezing after construction (or unfreezing mid-run) stays correct.
        if self.rl.vision_cache_mb <= 0:
            return None
        models = [self.accelerator.unwrap_model(self.model)]
        if getattr(self, "ref_model", None) is not None:  # shares entries while towers agree
            models.append(self.accelerator.unwrap_model(self.ref_model))
        models = [m for m in models if vision_tower(m) is not None]
        if not models:
            return None
        cache = VisionEmbeddingCache(int(self.rl.vision_cache_mb * 2**20))
        for model in models:
            cache.attach(model)
        return cache

    # ------------------------------------------------------------------ set-up checks

    def _check_group_layout(self) -> None:
        # the recipe checks the same rule at load time (recipes.Recipe._check_trainers)
        problem = self.rl.group_layout_problem(self.args.per_device_train_batch_size,
                                               self.args.steps_per_generation)
        if problem:
            raise ValueError(problem)

    def _reset_rollout_state(self) -> None:
        self._rollout_visual: list[dict[str, torch.Tensor]] = []
        self._shuffle_plan: list[ShuffledRollout] = []
        self._extra_prompts: list[list[dict[str, Any]]] = []
        self._extra_prompt_ids: list[list[int]] = []
        self._extra_completion_ids: list[list[int]] = []
        self._last_rewards: torch.Tensor | None = None

    def _mode(self) -> str:
        return "train" if self.model.training else "eval"

    def _log(self, name: str, value: float) -> None:
        self._metrics[self._mode()][name].append(float(value))

    # ------------------------------------------------------------------ rollout

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        train = self._mode() == "train"
        group_size = self.num_generations if train else self.num_generations_eval
        self._reset_rollout_state()
        rows = [dict(row) for row in inputs]
        if self._frame_source is not None:
            self._frame_source.fill(rows)
        augmentations = (
            self._plan_augmentations(rows, group_size) if train else [Augmentation()] * len(rows)
        )
        for row, aug in zip(rows, augmentations, strict=True):
            row["prompt"] = build_prompt(row, self.rl.prompt, frames=aug.frames, hint=aug.hint)
        if train and self.rl.temporal_enabled:
            self._shuffle_plan = plan_shuffled_rollouts(
                rows, group_size, self.rl.num_shuffled, self._shuffle_generator
            )
            self._extra_prompts = [
                self._shuffled_prompt(rows[r.row], augmentations[r.row], r.order)
                for r in self._shuffle_plan
            ]

        try:
            output = super()._generate_and_score_completions(rows)
        finally:
            self._forward_visual = None

        self.last_prompts = [row["prompt"] for row in rows]
        if train:
            self.rows_seen += [str(row.get("problem_id")) for row in rows[::group_size]]
        self._strip_logged_media()
        output["visual_rows"] = self._rollout_visual
        if len(rows) % group_size == 0:
            output["group_ids"] = group_ids(len(rows), group_size, self.accelerator.device)
        else:  # eval batches may cut groups; each row is then its own group
            output["group_ids"] = torch.arange(len(rows), device=self.accelerator.device)
        if train and self._augmenter is not None:
            self._update_augmenter(rows, group_size)
        if train and self.rl.dynamic_sampling:
            output = self._drop_zero_advantage_groups(output, group_size)
        self._log_vision_cache()
        return output

    def _log_vision_cache(self) -> None:
        cache = self.vision_cache
        if cache is None:
            return
        self._log("vision_cache/hit_rate", cache.stats.hit_rate)  # cumulative over the run
        self._log("vision_cache/mib", cache.nbytes / 2**20)
        self._log("vision_cache/bypassed_calls", cache.stats.bypassed)

    def _strip_logged_media(self) -> None:
        # TRL keeps the last prompts for its completion tables; frames make them heavy and
        # unserialisable (TRL strips images only), so keep the structure without pixels.
        logged = self._logs["prompt"]
        for i in range(len(logged)):
            logged[i] = _without_media(logged[i])

    def _shuffled_prompt(
        self, row: dict[str, Any], aug: Augmentation, order: Sequence[int]
    ) -> list[dict[str, Any]]:
        frames = aug.frames if aug.frames is not None else row["frames"]
        return build_prompt(row, self.rl.prompt, frames=[frames[i] for i in order], hint=aug.hint)

    def _tokenize_prompts(self, prompts: list) -> tuple[list[list[int]], None, dict[str, Any]]:
        # Ordered and shuffled prompts are encoded together; only the ordered ones are
        # returned to TRL, the shuffled ids wait for `_generate_single_turn`.
        conversations = list(prompts) + self._extra_prompts
        self._rollout_batch = render_and_encode(  # vLLM's prompts are built from it too
            self.processing_class, conversations, True, **self.chat_template_kwargs)
        encoded = self._rollout_batch[2]
        ids = encoded.token_lists()
        n = len(prompts)
        self._extra_prompt_ids = ids[n:]
        visual_rows = encoded.visual_rows()
        self._rollout_visual = visual_rows[:n]
        # TRL computes the old / reference log-probs right after generation, on these rows.
        self._forward_visual = self._rollout_visual
        fields: dict[str, Any] = dict(encoded.visual)
        fields["mm_token_type_ids"] = encoded.mm_type_lists()  # TRL left-pads per-token lists
        return ids[:n], None, fields

    def _generate_single_turn(
        self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False
    ):
        n = len(prompt_ids)
        if self._vllm is not None:
            completion_ids, logprobs = self._vllm_rollout()
        else:
            completion_ids, logprobs = super()._generate_single_turn(
                list(prompt_ids) + self._extra_prompt_ids,
                images,
                multimodal_fields,
                num_generations,
                has_tool_images,
            )
        self._extra_completion_ids = completion_ids[n:]
        return completion_ids[:n], (None if logprobs is None else logprobs[:n])

    def _vllm_rollout(self) -> tuple[list[list[int]], list[list[float]]]:
        """Ordered and shuffled prompts in one vLLM call, after syncing this step's weights."""
        model = self.accelerator.unwrap_model(self.model)
        step = self.state.global_step
        if self._vllm.needs_sync(step):
            # one sender (a server's other clients only wait), and nobody generates before
            # the new weights are in
            self._on_every_rank(lambda: self._vllm.sync(model, step,
                                                        send=self.accelerator.is_main_process))
            self._on_every_rank(self._vllm.synced)
        prompts = self._vllm.prompts(model, *self._rollout_batch)
        checked = self._vllm.checked_step
        out = self._on_every_rank(lambda: self._vllm.generate(
            model, prompts, step, max_tokens=self.max_completion_length,
            temperature=self.temperature, top_p=self.top_p, top_k=self.top_k or 0,
            suppress_token_ids=self.generation_kwargs["suppress_tokens"],
            pad_token_id=self.processing_class.tokenizer.pad_token_id,
        ))
        if self._vllm.checked_step != checked:  # the gate ran this rollout
            self._log("rollout/logprob_gap_max", self._vllm.last_gap.max_abs)
            self._log("rollout/logprob_gap_mean", self._vllm.last_gap.mean_abs)
        return out

    def _on_every_rank(self, call: Callable[[], Any]) -> Any:
        """`call()`, then every training process learns whether any of them failed: a
        process raising alone (a failed weight send, a disagreeing gate) would leave the
        others waiting in their next collective until it times out."""
        error: BaseException | None = None
        result = None
        try:
            result = call()
        except Exception as exc:  # re-raised below, on every process
            error = exc
        if self.accelerator.num_processes > 1:
            failed = gather_object([None if error is None else
                                    f"process {self.accelerator.process_index}: {error}"])
            if error is None and any(failed):
                raise RolloutDisagreement("another training process stopped the rollout: "
                                          + "; ".join(f for f in failed if f))
        if error is not None:
            raise error
        return result

    # ------------------------------------------------------------------ rewards

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if self._mode() == "train":
            group_size = self.num_generations
            if TEMPORAL_COLUMN in self._column:
                self._add_temporal_bonus(rewards, inputs, group_size)
            if LENGTH_COLUMN in self._column:
                self._add_length_bonus(rewards, completion_ids_list, group_size)
            self._log_accuracy_by_family(rewards, inputs)
        weights = self.reward_weights.to(rewards.device)
        self._last_rewards = (rewards * weights).nansum(dim=1)
        return rewards

    def _log_accuracy_by_family(self, rewards: torch.Tensor, inputs: list[dict[str, Any]]) -> None:
        # The accuracy reward per data family (accuracy_by_family/motion, ...): a mean over families
        # hides one that learns while another unlearns.
        name = self.rl.accuracy_reward if self.rl.accuracy_reward in self._column else None
        if name is None or "data_source" not in inputs[0]:
            return
        families = gather_object([family_of(row["data_source"]) for row in inputs])
        accuracy = rewards[:, self._column[name]].tolist()
        for family in sorted(set(families)):
            values = [a for a, f in zip(accuracy, families, strict=True)
                      if f == family and not math.isnan(a)]  # NaN: not applicable
            if values:
                self._log(f"accuracy_by_family/{family}", sum(values) / len(values))

    def _shuffled_accuracies(self, inputs: list[dict[str, Any]]) -> list[float | None]:
        if not self._shuffle_plan:
            return []
        texts = self.processing_class.batch_decode(
            self._extra_completion_ids, skip_special_tokens=True
        )
        completions = [[{"role": "assistant", "content": text}] for text in texts]
        rows = [inputs[r.row] for r in self._shuffle_plan]
        skip = ("prompt", "completion", "completion_ids")
        columns = {key: [row[key] for row in rows] for key in rows[0] if key not in skip}
        return self._accuracy_fn(
            prompts=self._extra_prompts,
            completions=completions,
            completion_ids=self._extra_completion_ids,
            trainer_state=self.state,
            **columns,
        )

    def _add_temporal_bonus(
        self, rewards: torch.Tensor, inputs: list[dict[str, Any]], group_size: int
    ) -> None:
        local_groups = len(inputs) // group_size
        table = shuffled_accuracy_table(
            self._shuffle_plan,
            self._shuffled_accuracies(inputs),
            local_groups,
            self.rl.num_shuffled,
        )
        table = gather(table.to(rewards.device)).cpu()  # all processes' groups, in row order
        cfg = self.rl.temporal
        stats = apply_temporal_bonus(
            rewards[:, self._column[self.rl.accuracy_reward]],
            table,
            group_size,
            cfg.alpha,
            cfg.mu,
            cfg.correct_threshold,
        )
        rewards[:, self._column[TEMPORAL_COLUMN]] = stats.bonus.to(rewards.device)
        if stats.p:
            self._log("temporal/p", sum(stats.p) / len(stats.p))
            self._log("temporal/p_shuffled", sum(stats.p_shuffled) / len(stats.p_shuffled))
            self._log("temporal/condition_fraction", sum(stats.applied) / len(stats.applied))
            self._log("temporal/bonus_group_fraction", sum(stats.rewarded) / len(stats.rewarded))
        self._log("temporal/video_groups", len(stats.p))

    def _add_length_bonus(
        self, rewards: torch.Tensor, completion_ids_list, group_size: int
    ) -> None:
        lengths = torch.tensor([len(ids) for ids in completion_ids_list], device=rewards.device)
        lengths = gather(lengths).view(-1, group_size).tolist()
        accuracy = torch.nan_to_num(rewards[:, self._column[self.rl.accuracy_reward]], nan=0.0)
        cfg = self.rl.length_bonus
        bonus = [
            length_bonus(
                acc, n, cfg.l_min, cfg.l_max, cfg.omega, cfg.min_correct, cfg.correct_threshold
            )
            for acc, n in zip(accuracy.view(-1, group_size).tolist(), lengths, strict=True)
        ]
        rewards[:, self._column[LENGTH_COLUMN]] = torch.tensor(bonus, device=rewards.device).view(
            -1
        )

    # ------------------------------------------------------------------ augmentation, sampling

    def _plan_augmentations(
        self, rows: list[dict[str, Any]], group_size: int
    ) -> list[Augmentation]:
        if self._augmenter is None:
            return [Augmentation()] * len(rows)
        plans: list[Augmentation] = []
        for start in range(0, len(rows), group_size):
            aug = self._augmenter.augmentation(
                rows[start]
            )  # one draw per group: same noise for all G
            plans.extend([aug] * len(rows[start : start + group_size]))
        kinds = [plans[i].kind for i in range(0, len(plans), group_size)]
        self._log("augment/hint_fraction", kinds.count("hint") / len(kinds))
        self._log("augment/perturb_fraction", kinds.count("perturb") / len(kinds))
        return plans

    def _update_augmenter(self, rows: list[dict[str, Any]], group_size: int) -> None:
        problem_ids = gather_object(
            [rows[i]["problem_id"] for i in range(0, len(rows), group_size)]
        )
        group_rewards = self._last_rewards.view(-1, group_size).tolist()
        deltas = self._augmenter.update(problem_ids, group_rewards)
        self._log("augment/mean_abs_dR", sum(abs(d) for d in deltas) / max(len(deltas), 1))
        self._log("augment/buffer_mean", self._augmenter.buffer.mean())

    def _drop_zero_advantage_groups(
        self, output: dict[str, Any], group_size: int
    ) -> dict[str, Any]:
        zero = zero_advantage_groups(output["advantages"], group_size)
        keep = select_informative_groups(zero, int(self.accelerator.gather((~zero).sum()).max()))
        self._log(
            "dynamic_sampling/kept_group_fraction",
            self.accelerator.gather((~zero).float().mean()).mean().item(),
        )
        if not keep.all():
            output = select_rows(output, keep.repeat_interleave(group_size))
        mask = output["completion_mask"]
        if "tool_mask" in output:
            mask = mask * output["tool_mask"]
        output["num_items_in_batch"] = self.accelerator.gather(mask.sum()).sum()
        return output

    # ------------------------------------------------------------------ checkpoints

    def _save_checkpoint(self, model, trial):
        # T-GRPO's shuffle generator and the augmentation controller are training state
        # too. Written before the trainer's own files, so that trainer_state.json stays the
        # last file of a checkpoint (a resume takes its presence as "complete").
        folder = Path(self._get_output_dir(trial=trial))
        folder = folder / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        folder.mkdir(parents=True, exist_ok=True)
        state = {
            "shuffle_generator": self._shuffle_generator.get_state().tolist(),
            "augmenter": None if self._augmenter is None else self._augmenter.state_dict(),
        }
        (folder / RL_STATE.format(self.accelerator.process_index)).write_text(json.dumps(state))
        super()._save_checkpoint(model, trial)

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        path = None if checkpoint is None else Path(checkpoint) / RL_STATE.format(
            self.accelerator.process_index
        )
        if path is None or not path.is_file():
            return
        state = json.loads(path.read_text())
        self._shuffle_generator.set_state(
            torch.tensor(state["shuffle_generator"], dtype=torch.uint8)
        )
        if self._augmenter is not None and state["augmenter"] is not None:
            self._augmenter.load_state_dict(state["augmenter"])

    # ------------------------------------------------------------------ loss

    def _get_per_token_logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        compute_aux_loss=False,
        **image_kwargs,
    ):
        """TRL's chunked log-prob forward, with each row's images / videos and modality map."""
        rows = self._forward_visual
        if rows is None or len(rows) != input_ids.size(0):
            raise RuntimeError("log-prob forward without the rows' visual inputs (internal error)")
        batch_size = batch_size or input_ids.size(0)
        prompt_length = input_ids.size(1) - logits_to_keep
        all_logps, all_entropies, all_aux = [], [], []
        for start in range(0, input_ids.size(0), batch_size):
            end = min(start + batch_size, input_ids.size(0))
            ids, mask = input_ids[start:end], attention_mask[start:end]
            types = mm_token_types(ids, self._image_token_id, self._video_token_id)
            types[:, prompt_length:] = 0  # completions are text (visual tokens are suppressed)
            model_inputs = {
                "input_ids": ids,
                "attention_mask": mask,
                "mm_token_type_ids": types,
                **collate_visual_rows(rows[start:end], ids.device),
            }
            if compute_aux_loss:
                model_inputs["output_router_logits"] = True
            labels = ids.masked_fill(mask == 0, -100)
            labels[:, :-logits_to_keep] = -100
            with self.accelerator.autocast():
                outputs = model(**model_inputs, labels=labels, fused_lm_head=True)
            all_logps.append(outputs.log_probs[:, -logits_to_keep:])
            if compute_entropy:
                all_entropies.append(outputs.entropy[:, -logits_to_keep:])
            if compute_aux_loss:
                all_aux.append(outputs.aux_loss)
        logps = torch.cat(all_logps, dim=0)
        entropies = torch.cat(all_entropies, dim=0) if compute_entropy else None
        aux_loss = torch.stack(all_aux).mean() if compute_aux_loss else None
        return logps, entropies, aux_loss

    def _compute_loss(self, model, inputs):
        self._forward_visual = inputs["visual_rows"]
        try:
            if self.rl.algorithm == "reg_grpo":
                return self._regression_loss(model, inputs)
            return super()._compute_loss(model, inputs)
        finally:
            self._forward_visual = None

    def _regression_loss(self, model, inputs):
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([inputs["prompt_ids"], completion_ids], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], completion_mask], dim=1)
        mask = (
            completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        )
        per_token_logps, entropies, aux_loss = self._get_per_token_logps_and_entropies(
            model,
            input_ids,
            attention_mask,
            completion_ids.size(1),
            compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled,
        )
        old = inputs.get("old_per_token_logps")
        result = reg_grpo_loss(
            per_token_logps,
            per_token_logps.detach() if old is None else old,
            inputs["advantages"],
            mask,
            inputs["group_ids"],
            eps=self.rl.regression.eps,
            reduction=self.rl.regression.sequence_logprob,
            beta=self.beta,
            ref_per_token_logps=inputs.get("ref_per_token_logps"),
        )
        mode = self._mode()
        normalizer = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        loss = result.loss / normalizer
        if self.rl.regression.loss_scale == "policy":  # see RegressionConfig.loss_scale
            loss = loss * (self.rl.regression.eps**0.5 / 2)
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * aux_loss / normalizer
        gathered = self.accelerator.gather
        mask_f = mask.float()
        token_entropy = (entropies * mask_f).sum() / mask_f.sum().clamp(min=1.0)
        self._log("entropy", gathered(token_entropy.detach()).mean().item())
        self._log(
            "reg/predicted_advantage_abs",
            gathered(result.predicted_advantages.abs().mean().detach()).mean().item(),
        )
        if result.kl is not None:
            self._log("kl", gathered(result.kl.detach()).mean().item())
        return loss


def build_grpo_trainer(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    train_dataset: Dataset,
    output_dir: str | os.PathLike,
    config: RLConfig | None = None,
    reward_funcs: Sequence[str | Callable[..., list[float | None]]] | None = None,
    eval_dataset: Dataset | None = None,
    callbacks: list[Any] | None = None,
) -> VideoGRPOTrainer:
    """A VideoGRPOTrainer from an RLConfig; `reward_funcs` overrides config.reward_funcs."""
    config = config or RLConfig()
    funcs = resolve_reward_funcs(
        reward_funcs if reward_funcs is not None else config.reward_funcs, config.reward_params
    )
    return VideoGRPOTrainer(
        model=model,
        reward_funcs=funcs,
        args=config.to_trl(output_dir),
        train_dataset=train_dataset,
        processing_class=processor,
        rl=config,
        eval_dataset=eval_dataset,
        callbacks=callbacks,
    )


def run_grpo(
    model_dir: str | os.PathLike,
    train_dataset: Dataset,
    output_dir: str | os.PathLike,
    config: RLConfig | None = None,
    callbacks: list[Any] | None = None,
) -> Path:
    """RL-train the checkpoint in `model_dir`; the result is saved to `output_dir/final`."""
    config = config or RLConfig()
    # RLConfig() carries the library's default prompt; a vlmrl SFT checkpoint knows its own
    config = dataclasses.replace(config, prompt=resolve_prompt(config.prompt, model_dir))
    loaded = load_model(model_dir, dtype="float32")
    trainer = build_grpo_trainer(
        loaded.model, loaded.processor, train_dataset, output_dir, config, callbacks=callbacks
    )
    trainer.train()
    # replaces the final model of an earlier run here, never the model it started from
    return save_model_dir(trainer.model, loaded.processor, Path(output_dir) / "final",
                          overwrite=True, protected=[("starting model", model_dir)])
