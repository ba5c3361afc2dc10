"""Comparing algorithms over several tasks and seeds, with honest statistics.

One task and one seed cannot tell two algorithms apart. This module follows Agarwal et al. 2021, "Deep
Reinforcement Learning at the Edge of the Statistical Precipice" (the rliable library), in plain numpy:

- :func:`normalise` maps each task's raw score to a common scale: 0 = the untrained policy, 1 = that task's best;
- :func:`iqm`, the interquartile mean: the mean of the middle 50 % of all (run, task) scores, robust to outlier
  runs yet less noisy than the median;
- :func:`stratified_bootstrap_ci`: a percentile confidence interval of any aggregate, resampling the runs with
  replacement *within each task* (the tasks are fixed, the seeds are the random sample);
- :func:`performance_profile`: the fraction of (run, task) scores above each threshold τ.

Every score matrix has shape ``(runs, tasks)``: one row per seed, one column per task.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from textenv.validation import InputError

__all__ = ["iqm", "normalise", "performance_profile", "stratified_bootstrap_ci"]


def _matrix(scores: np.ndarray | Sequence[Sequence[float]], argument: str = "scores") -> np.ndarray:
    """``scores`` as a finite float64 ``(runs, tasks)`` matrix, or an :class:`InputError` naming ``argument``."""
    matrix = np.asarray(scores, dtype=np.float64)
    if matrix.ndim == 1:
        matrix = matrix[:, None]
    if matrix.ndim != 2 or matrix.size == 0:
        raise InputError(f"{argument} must be a non-empty (runs, tasks) matrix, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise InputError(f"{argument} holds NaN or infinite scores: a run failed or a score is missing; rerun it")
    return matrix


def normalise(score: np.ndarray | float, low: float, high: float) -> np.ndarray:
    """``(score − low) / (high − low)``: 0 at ``low`` (the untrained policy), 1 at ``high`` (the task's best).

    A task whose best equals its untrained score (nothing learned it) cannot be normalised: InputError.
    """
    if not (np.isfinite(low) and np.isfinite(high)) or high == low:
        raise InputError(f"cannot normalise between low={low!r} and high={high!r}: they must be finite and differ "
                         "(did every run of this task stay at the untrained score?)")
    return (np.asarray(score, dtype=np.float64) - low) / (high - low)


def iqm(scores: np.ndarray | Sequence[Sequence[float]]) -> float:
    """Interquartile mean of all entries: sort the ``n`` scores, drop ``⌊n/4⌋`` from each end, average the rest
    (scipy.stats.trim_mean(·, 0.25) over the flattened matrix, as rliable computes it)."""
    flat = np.sort(_matrix(scores).reshape(-1))
    cut = int(0.25 * flat.size)
    return float(flat[cut:flat.size - cut].mean())


def stratified_bootstrap_ci(
    scores: np.ndarray | Sequence[Sequence[float]],
    statistic: Callable[[np.ndarray], float] = iqm,
    *,
    repetitions: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval ``(low, high)`` of ``statistic(scores)``.

    Each repetition draws, for every task (column) on its own, ``runs`` rows with replacement (the stratified
    bootstrap of rliable: tasks are fixed, seeds are resampled), and evaluates ``statistic`` on the resampled
    ``(runs, tasks)`` matrix; the interval holds the central ``confidence`` mass of those values.
    """
    matrix = _matrix(scores)
    if not 0.0 < confidence < 1.0:
        raise InputError(f"confidence={confidence!r} must be in (0, 1), e.g. 0.95")
    if int(repetitions) < 1:
        raise InputError(f"repetitions={repetitions!r} must be a positive number of bootstrap draws, e.g. 2000")
    runs, tasks = matrix.shape
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, runs, size=(int(repetitions), runs, tasks))  # per task, its own resampled seeds
    values = np.array([statistic(np.take_along_axis(matrix, draw, axis=0)) for draw in rows])
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)


def performance_profile(scores: np.ndarray | Sequence[Sequence[float]], thresholds: np.ndarray) -> np.ndarray:
    """The fraction of (run, task) scores strictly above each τ of ``thresholds``, shape ``(len(thresholds),)``:
    the score distribution of rliable's performance profiles (a curve that lies higher is better everywhere)."""
    flat = _matrix(scores).reshape(-1)
    taus = np.asarray(thresholds, dtype=np.float64)
    return (flat[None, :] > taus[:, None]).mean(axis=1)
