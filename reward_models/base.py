"""The one protocol every reward model implements: batched ``score(prompts, completions)``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np


class RewardModel(ABC):
    """Scores completions of prompts; higher is better.

    ``score`` takes two equally long lists of strings and returns a float array of shape ``(N,)``,
    one finite score per (prompt, completion) pair. Implementations should batch internally.
    """

    @abstractmethod
    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        """Scores of shape ``(N,)`` (float64) for N (prompt, completion) pairs."""

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        return self.score(prompts, completions)


def checked_scores(reward_model: RewardModel, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
    """Call ``reward_model.score`` and reject a wrong count or a non-finite value with a clear error."""
    scores = np.asarray(reward_model.score(list(prompts), list(completions)), dtype=np.float64).reshape(-1)
    name = type(reward_model).__name__
    if scores.shape[0] != len(completions):
        raise ValueError(f"reward model {name} returned {scores.shape[0]} scores for {len(completions)} completions")
    if not np.all(np.isfinite(scores)):
        bad = [completions[i] for i in np.flatnonzero(~np.isfinite(scores))[:3]]
        raise ValueError(f"reward model {name} returned NaN/inf scores, e.g. for completions {bad!r}")
    return scores
