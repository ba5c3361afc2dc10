"""Wrap a plain function as a reward model."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from textenv.reward_models.base import RewardModel


class CallableReward(RewardModel):
    """``fn(prompts, completions) -> sequence of N floats`` as a :class:`RewardModel`."""

    def __init__(self, fn: Callable[[Sequence[str], Sequence[str]], Sequence[float]]) -> None:
        if not callable(fn):
            raise TypeError(f"CallableReward needs a callable, got {type(fn)}")
        self.fn = fn

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        return np.asarray(self.fn(prompts, completions), dtype=np.float64)
