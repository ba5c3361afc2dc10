"""The one protocol every reward model implements: batched ``score(prompts, completions)``, and the one check
of what a reward model returns (:func:`checked_scores`), which every caller in textenv goes through."""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from textenv.validation import InputError

#: What every reward model must return, said in every error about its scores.
SCORES_CONTRACT = (
    "a reward model must return one finite float per completion: a list or 1-D numpy array of N floats "
    "(a torch tensor: scores.detach().cpu().tolist())"
)


class RewardModel(ABC):
    """Scores completions of prompts; higher is better.

    ``score`` takes two equally long lists of strings and returns a float array of shape ``(N,)``,
    one finite score per (prompt, completion) pair. Implementations should batch internally.
    Calling the model (``rm(prompts, completions)``) returns the same scores, checked by :func:`checked_scores`.
    """

    @abstractmethod
    def score(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        """Scores of shape ``(N,)`` (float64) for N (prompt, completion) pairs."""

    @property
    def display_name(self) -> str:
        """How errors name this reward model (the class name by default)."""
        return type(self).__name__

    def __call__(self, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
        return checked_scores(self, prompts, completions)


def checked_scores(reward_model: RewardModel, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
    """``reward_model.score(prompts, completions)`` as float64 ``(N,)``, or :class:`InputError` naming the reward
    model and what it returned (None, strings, a wrong count, NaN/±inf, a tensor that requires grad...)."""
    raw = reward_model.score(list(prompts), list(completions))
    return as_scores(raw, reward_model.display_name, completions)


def as_scores(raw: Any, name: str, completions: Sequence[str]) -> np.ndarray:
    """Convert what reward model ``name`` returned for ``completions`` to float64 ``(N,)``; refuse anything that
    is not N finite numbers with an :class:`InputError` that names ``name``, shows what came back and says how
    to fix it. Accepts a list/tuple of numbers, a numpy array or a torch tensor without grad, of shape ``(N,)``
    or ``(N, 1)``."""
    count = len(completions)

    def refuse(what: str) -> InputError:
        return InputError(f"reward model {name} returned {what} for {count} completion(s); {SCORES_CONTRACT}")

    if raw is None:
        raise refuse("None (a missing return statement?)")
    if isinstance(raw, (str, bytes, dict)) or np.isscalar(raw):
        raise refuse(f"a single {type(raw).__name__} {_short(raw)}")
    raw = _from_torch(raw, refuse)
    try:
        array = np.asarray(raw)
    except (ValueError, TypeError) as err:  # ragged nesting, or a sequence numpy cannot read
        raise refuse(f"{type(raw).__name__} {_short(raw)}, which is not an array of numbers ({err})") from None
    if array.dtype.kind not in "biuf":
        sample = next((v for v in array.reshape(-1) if not isinstance(v, (int, float, np.number))), array.dtype)
        sample = sample.item() if isinstance(sample, np.generic) else sample
        raise refuse(f"non-numbers (e.g. {_short(sample)} of type {type(sample).__name__})")
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.shape != (count,):
        raise refuse(f"an array of shape {array.shape} (expected ({count},))")
    scores = array.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        examples = ", ".join(f"{scores[i]} for {completions[i][:40]!r}" for i in bad[:3])
        raise refuse(f"{bad.size} non-finite score(s) (NaN/inf: {examples})")
    return scores


def _from_torch(raw: Any, refuse: Any) -> Any:
    """A torch tensor (or a list of them) as numpy, refusing tensors that require grad."""
    if "torch" not in sys.modules:  # no tensor can exist without torch imported
        return raw
    import torch

    items = list(raw) if isinstance(raw, (list, tuple)) else [raw]
    tensors = [item for item in items if isinstance(item, torch.Tensor)]
    if any(t.requires_grad for t in tensors):
        raise refuse("a torch tensor that requires grad (scores must not carry a graph: return "
                     "scores.detach().cpu().tolist())")
    if isinstance(raw, torch.Tensor):
        return raw.detach().cpu().double().numpy()
    if tensors:
        return [item.detach().cpu().double().numpy() if isinstance(item, torch.Tensor) else item for item in items]
    return raw


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
