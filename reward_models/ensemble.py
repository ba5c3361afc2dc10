"""A weighted sum of reward models: r(x, y) = Σ_m w_m · norm_m(r_m(x, y)).

Members are reward models given by object or by any name :func:`textenv.reward_models.make_reward_model`
accepts. With ``normalize=True`` each member's scores are standardised, (s − μ_m) / σ_m, so members on
different scales (VADER in [−1, 1], a preference RM's logits, a classifier's probabilities) weigh as their
weights say. μ_m and σ_m are fixed by :meth:`EnsembleReward.calibrate` on reference data when it is called;
otherwise they are running statistics over every score seen so far (the current batch included), which
makes the reward slowly non-stationary early in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from textenv.reward_models.base import RewardModel, checked_scores
from textenv.validation import InputError, check_number


class EnsembleReward(RewardModel):
    """Weighted sum of member reward models.

    Args:
        members: reward models, names (``"vader"``, ``"preference:<dir>"``...) or ``fn(prompts, completions)``.
        weights: one finite number per member (negative weights penalise a member); default: equal weights
            1 / M. At least one weight must be non-zero.
        normalize: standardise each member's scores before weighting (see module docstring).
        eps: added to σ_m to avoid division by zero.
    """

    def __init__(
        self,
        members: Sequence[Any],
        weights: Sequence[float] | None = None,
        normalize: bool = False,
        eps: float = 1e-6,
    ) -> None:
        from textenv.reward_models import make_reward_model  # the registry imports this module

        if isinstance(members, (str, RewardModel)) or not isinstance(members, Sequence) or len(members) == 0:
            raise InputError("ensemble members must be a non-empty list of reward models or reward-model names")
        self.members = [make_reward_model(member) for member in members]
        if weights is None:
            weights = [1.0 / len(self.members)] * len(self.members)
        if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence):
            raise InputError(f"ensemble weights must be a list of numbers, got {type(weights).__name__}")
        if len(weights) != len(self.members):
            raise InputError(f"ensemble: got {len(weights)} weights for {len(self.members)} members; give one weight "
                             "per member")
        for i, w in enumerate(weights):
            check_number(f"ensemble weights[{i}]", w)
        if all(w == 0 for w in weights):
            raise InputError("all ensemble weights are 0; at least one member must count")
        check_number("ensemble eps", eps, low=0, low_open=True)
        self.weights = np.asarray(weights, dtype=np.float64)
        self.normalize = bool(normalize)
        self.eps = float(eps)
        M = len(self.members)
        self._count = np.zeros(M)  # running statistics (Welford): count, mean, sum of squared deviations
        self._mean = np.zeros(M)
        self._m2 = np.zeros(M)
        self.calibrated = False

    def member_scores(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        """Raw scores of every member, ``(N, M)`` float64."""
        return np.stack([checked_scores(m, prompts, completions) for m in self.members], axis=1)

    @property
    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Current per-member (mean, std), each ``(M,)``."""
        var = np.where(self._count > 1, self._m2 / np.maximum(self._count, 1), 0.0)
        return self._mean.copy(), np.sqrt(var)

    def calibrate(self, prompts: Sequence[str], completions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Fix each member's mean and std from these reference pairs (no more running updates)."""
        self._count[:], self._mean[:], self._m2[:] = 0, 0, 0
        self._update(self.member_scores(prompts, completions))
        self.calibrated = True
        return self.stats

    def _update(self, scores: np.ndarray) -> None:
        """Chan et al.'s parallel Welford update with a batch ``(N, M)``."""
        n = scores.shape[0]
        if n == 0:
            return
        batch_mean = scores.mean(axis=0)
        batch_m2 = ((scores - batch_mean) ** 2).sum(axis=0)
        total = self._count + n
        delta = batch_mean - self._mean
        self._mean = self._mean + delta * n / total
        self._m2 = self._m2 + batch_m2 + delta**2 * self._count * n / total
        self._count = total

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        scores = self.member_scores(prompts, completions)
        if self.normalize:
            if not self.calibrated:
                self._update(scores)
            mean, std = self.stats
            scores = (scores - mean) / (std + self.eps)
        return scores @ self.weights
