"""DeepVideo-R1 difficulty-aware augmentation (see `AugmentConfig` for the rule and schedules).

Hard prompts get a hint (a prefix of the row's CoT trace), easy prompts get perturbed
frames (Gaussian noise; for videos also frames blacked out). Difficulty comes from a
replay buffer of recent rewards: dR = mean(buffer) - mean(group rewards).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from vlmrl.train.prompts import reasoning_hint
from vlmrl.train.rl_config import AugmentConfig


class RewardReplayBuffer:
    """The last `window` rewards."""

    def __init__(self, window: int = 100) -> None:
        self._values: deque[float] = deque(maxlen=window)

    def extend(self, rewards: Iterable[float]) -> None:
        self._values.extend(float(r) for r in rewards if r == r)  # skip NaN

    def __len__(self) -> int:
        return len(self._values)

    def mean(self) -> float:
        return float(np.mean(self._values)) if self._values else 0.0

    def values(self) -> list[float]:
        return list(self._values)

    def load(self, values: Iterable[float]) -> None:
        self._values.clear()
        self._values.extend(values)


@dataclass
class Augmentation:
    """What to change in a row's prompt: a hint text and/or replacement frames."""

    level: float = 0.0
    hint: str | None = None
    frames: list[Image.Image] | None = None

    @property
    def kind(self) -> str:
        if self.hint:
            return "hint"
        return "perturb" if self.frames is not None else "none"


def perturb_frames(
    frames: Sequence[Any],
    strength: float,
    is_video: bool,
    config: AugmentConfig,
    rng: np.random.Generator,
) -> list[Image.Image]:
    """Noise (std = strength * max_noise_std of the pixel range) and, for videos, frame masking."""
    arrays = [
        np.asarray(f.convert("RGB") if isinstance(f, Image.Image) else f, dtype=np.float32)
        for f in frames
    ]
    std = 255.0 * config.max_noise_std * strength
    out = [np.clip(a + rng.normal(0.0, std, a.shape), 0, 255) if std > 0 else a for a in arrays]
    if is_video and len(out) > 1:
        masked = rng.random(len(out)) < config.max_mask_prob * strength
        if masked.all():
            masked[rng.integers(len(out))] = False
        out = [np.zeros_like(a) if m else a for a, m in zip(out, masked, strict=True)]
    return [Image.fromarray(a.astype(np.uint8)) for a in out]


class DifficultyAugmenter:
    """Per-prompt augmentation levels driven by a shared reward replay buffer."""

    def __init__(self, config: AugmentConfig, seed: int = 0) -> None:
        self.config = config
        self.buffer = RewardReplayBuffer(config.window)
        self.levels: dict[str, float] = {}
        self._rng = np.random.default_rng(seed)

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state, saved in trainer checkpoints so a resumed run continues it."""
        return {
            "buffer": self.buffer.values(),
            "levels": dict(self.levels),
            "rng": self._rng.bit_generator.state,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.buffer.load(state["buffer"])
        self.levels = dict(state["levels"])
        self._rng.bit_generator.state = state["rng"]

    def level(self, problem_id: str) -> float:
        return self.levels.get(problem_id, 0.0)

    def augmentation(self, row: Mapping[str, Any]) -> Augmentation:
        """How to augment this row now (from its level; none for unseen prompts)."""
        level = self.level(row["problem_id"])
        if level > 0:
            hint = reasoning_hint(row.get("process") or "", self.config.max_hint_fraction * level)
            return Augmentation(level=level, hint=hint or None)
        if level < 0:
            frames = perturb_frames(
                row["frames"], -level, row["data_type"] == "video", self.config, self._rng
            )
            return Augmentation(level=level, frames=frames)
        return Augmentation()

    def update(
        self, problem_ids: Sequence[str], group_rewards: Sequence[Sequence[float]]
    ) -> list[float]:
        """Record scored groups: returns each group's dR (0 before min_history rewards)."""
        deltas = []
        for pid, rewards in zip(problem_ids, group_rewards, strict=True):
            finite = [float(r) for r in rewards if r == r]
            if len(self.buffer) >= self.config.min_history and finite:
                d_r = self.buffer.mean() - float(np.mean(finite))
                if abs(d_r) >= self.config.dead_zone:
                    level = self.level(pid) + self.config.gain * d_r
                    self.levels[pid] = float(np.clip(level, -1.0, 1.0))
            else:
                d_r = 0.0
            deltas.append(d_r)
        for rewards in group_rewards:
            self.buffer.extend(rewards)
        return deltas
