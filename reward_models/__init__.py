"""Reward models behind one batched protocol, and a registry by name.

``make_reward_model`` accepts a registered name (``"vader"``), a :class:`RewardModel` instance, or a
callable ``fn(prompts, completions) -> scores``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from textenv.reward_models.base import RewardModel, checked_scores
from textenv.reward_models.function import CallableReward
from textenv.reward_models.vader import VaderSentimentReward

REWARD_MODELS: dict[str, Callable[..., RewardModel]] = {"vader": VaderSentimentReward}


def register_reward_model(name: str, factory: Callable[..., RewardModel]) -> None:
    """Make ``factory(**kwargs)`` available as ``reward_model=name``."""
    REWARD_MODELS[name] = factory


def make_reward_model(spec: Any = "vader", **kwargs: Any) -> RewardModel:
    """Resolve a name, an instance or a callable to a :class:`RewardModel`."""
    if isinstance(spec, RewardModel):
        return spec
    if isinstance(spec, str):
        if spec not in REWARD_MODELS:
            raise ValueError(f"reward_model={spec!r} is not registered; choose one of {sorted(REWARD_MODELS)}")
        return REWARD_MODELS[spec](**kwargs)
    if callable(spec):
        return CallableReward(spec)
    raise TypeError(f"reward_model must be a name, a RewardModel or a callable, got {type(spec)}")


__all__ = [
    "REWARD_MODELS",
    "CallableReward",
    "RewardModel",
    "VaderSentimentReward",
    "checked_scores",
    "make_reward_model",
    "register_reward_model",
]
