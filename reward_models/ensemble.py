"""A weighted sum of reward models: r(x, y) = Σ_m w_m · norm_m(r_m(x, y)).

Members are reward models given by object or by any name :func:`textenv.reward_models.make_reward_model`
accepts. With ``normalize=True`` each member's scores are standardised, (s − μ_m) / σ_m, so members on
different scales (VADER in [−1, 1], a preference RM's logits, a classifier's probabilities) weigh as their
weights say. μ_m and σ_m are fixed by :meth:`EnsembleReward.calibrate` on reference data when it is called;
otherwise they are running statistics over every score seen so far (the current batch included), which
makes the reward slowly non-stationary early in training.

Under torchrun (data-parallel training, :mod:`textenv.distributed`) each rank scores its own batches; the agent
calls :meth:`EnsembleReward.synchronise_statistics` after every iteration on every rank, which all-gathers the
batch statistics each rank saw since the last call and merges them (rank order) into the statistics of the last
call, so every rank holds the same μ_m, σ_m: those of all ranks' scores. Within an iteration a rank's own batch is
folded in at once, as in one process.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from textenv import distributed
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
        # Under torchrun: the statistics all ranks agreed on at the last synchronise_statistics, and this rank's
        # batches since then as (count, mean, M2) rows.
        self._agreed = (self._count.copy(), self._mean.copy(), self._m2.copy())
        self._pending: list[np.ndarray] = []

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
        """Fold a batch ``(N, M)`` into the running statistics (and, under torchrun, keep its statistics for
        :meth:`synchronise_statistics`)."""
        n = scores.shape[0]
        if n == 0:
            return
        batch_mean = scores.mean(axis=0)
        batch_m2 = ((scores - batch_mean) ** 2).sum(axis=0)
        self._count, self._mean, self._m2 = _merge((self._count, self._mean, self._m2), n, batch_mean, batch_m2)
        if distributed.world_size() > 1 and not self.calibrated:
            self._pending.append(np.stack([np.full_like(batch_mean, n), batch_mean, batch_m2]))

    def running_state(self) -> dict[str, Any]:
        """The running normaliser's state (what a checkpoint saves for an exact resume): per-member count, mean
        and M2 ``(M,)`` each, and whether :meth:`calibrate` fixed them."""
        return {"count": self._count.copy(), "mean": self._mean.copy(), "m2": self._m2.copy(),
                "calibrated": self.calibrated}

    def load_running_state(self, state: dict[str, Any]) -> None:
        """Inverse of :meth:`running_state`; :class:`InputError` when it does not fit this ensemble's members."""
        arrays = [np.asarray(state.get(key), dtype=np.float64) for key in ("count", "mean", "m2")]
        if any(a.shape != self._count.shape for a in arrays) or not isinstance(state.get("calibrated"), bool):
            raise InputError(f"the saved ensemble normaliser does not fit this ensemble of {len(self.members)} "
                             "members; resume with the reward model the run was trained with")
        self._count, self._mean, self._m2 = arrays
        self.calibrated = state["calibrated"]
        self._agreed = (self._count.copy(), self._mean.copy(), self._m2.copy())
        self._pending = []

    def synchronise_statistics(self) -> None:
        """Make the running statistics the same on every rank: the statistics of the last call merged with every
        rank's batches since then (all-gathered, in rank order). Every rank must call it (a collective); the agent
        does after each iteration. No-op in one process and once :meth:`calibrate` fixed the statistics."""
        if distributed.world_size() == 1 or self.calibrated:
            return
        statistics = self._agreed
        for batches in distributed.gather_state(self._pending):
            for n, batch_mean, batch_m2 in batches:
                statistics = _merge(statistics, n, batch_mean, batch_m2)
        self._count, self._mean, self._m2 = (a.copy() for a in statistics)
        self._agreed = statistics
        self._pending = []

    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        scores = self.member_scores(prompts, completions)
        if self.normalize:
            if not self.calibrated:
                self._update(scores)
            mean, std = self.stats
            scores = (scores - mean) / (std + self.eps)
        return scores @ self.weights


def _merge(statistics: tuple[np.ndarray, np.ndarray, np.ndarray], n: float | np.ndarray, batch_mean: np.ndarray,
           batch_m2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chan et al.'s parallel Welford update (1979): running (count, mean, M2), each ``(M,)``, merged with a batch
    of ``n`` scores with mean ``batch_mean`` and sum of squared deviations ``batch_m2``."""
    count, mean, m2 = statistics
    total = count + n
    delta = batch_mean - mean
    return total, mean + delta * n / total, m2 + batch_m2 + delta**2 * count * n / total
