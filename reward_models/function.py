"""Wrap a plain function as a reward model."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from textenv.reward_models.base import RewardModel, as_scores
from textenv.validation import InputError


class CallableReward(RewardModel):
    """``fn(prompts, completions) -> N floats`` (a list, a numpy array or a torch tensor without grad) as a
    :class:`RewardModel`; anything else it returns raises :class:`InputError` naming the function."""

    def __init__(self, fn: Callable[[Sequence[str], Sequence[str]], Sequence[float]]) -> None:
        if not callable(fn):
            raise InputError(f"reward_model: CallableReward needs a callable fn(prompts, completions), got "
                             f"{type(fn).__name__}")
        self.fn = fn

    @property
    def display_name(self) -> str:
        """``function <qualified name>`` (``functools.partial`` and callable objects by their type)."""
        name = getattr(self.fn, "__qualname__", None) or getattr(self.fn, "__name__", None) or type(self.fn).__name__
        return f"function {name}"

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        return as_scores(self.fn(prompts, completions), self.display_name, completions)
