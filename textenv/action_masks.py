"""Invalid-action masks over the vocabulary: top-k / top-p (nucleus) sets of a next-token distribution.

NLPO (Ramamurthy et al. 2022, "Is Reinforcement Learning (Not) for Natural Language Processing?", RL4LMs)
restricts each PPO action to the top-p tokens of a *masking model*, which shrinks the action space from
the whole vocabulary to a few plausible tokens. RL4LMs' masking model is a copy of the policy refreshed
every μ iterations; textenv uses the frozen reference π_ref (μ = ∞), i.e. "only tokens the initial model
finds plausible may be sampled", which also bounds how far the policy can drift from π_ref.

Both functions take logits ``(..., V)`` (any leading batch shape, typically ``(B, V)`` from
``env.engine.ref_logits``) and return a bool tensor of the same shape, True = allowed. Every row keeps at
least one token (its argmax); ``always_allow`` adds token ids (e.g. EOS, so episodes can always end).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from textenv.validation import InputError, check_int, check_number


def top_k_mask(logits: torch.Tensor, k: int, always_allow: Sequence[int] | None = None) -> torch.Tensor:
    """Allow the ``k`` highest-logit tokens of every row (more only when logits tie at the k-th value).

    Args:
        logits: ``(..., V)`` next-token logits (or log-probs: only the order matters).
        k: tokens kept per row, ``1 <= k``; ``k >= V`` allows everything.
        always_allow: token ids allowed in every row regardless of rank.

    Returns:
        bool ``(..., V)``.
    """
    _check_logits(logits)
    check_int("top_k_mask k", k, minimum=1)
    vocab = logits.shape[-1]
    if k >= vocab:
        mask = torch.ones_like(logits, dtype=torch.bool)
    else:
        kth_value = logits.topk(k, dim=-1).values[..., -1:]  # (..., 1)
        mask = logits >= kth_value
    return _allow(mask, always_allow)


def top_p_mask(logits: torch.Tensor, p: float, always_allow: Sequence[int] | None = None) -> torch.Tensor:
    """Allow the smallest set of most likely tokens whose probability mass is >= ``p`` (nucleus set).

    A token is kept when the mass of the tokens ranked strictly above it is < ``p``, so the top token is
    always kept and the kept mass is >= ``p`` (up to float rounding).

    Args:
        logits: ``(..., V)`` next-token logits; softmax gives the distribution.
        p: mass to cover, ``0 < p <= 1`` (``p = 1`` keeps every token with non-zero probability).
        always_allow: token ids allowed in every row regardless of rank.

    Returns:
        bool ``(..., V)``.
    """
    _check_logits(logits)
    check_number("top_p_mask p", p, low=0, low_open=True, high=1)
    probs = logits.float().softmax(dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of the tokens ranked above each one
    keep_sorted = mass_before < p
    keep_sorted[..., 0] = True
    mask = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return _allow(mask, always_allow)


def _allow(mask: torch.Tensor, always_allow: Sequence[int] | None) -> torch.Tensor:
    if always_allow:
        ids = torch.as_tensor(list(always_allow), dtype=torch.long, device=mask.device)
        if bool(((ids < 0) | (ids >= mask.shape[-1])).any()):
            raise InputError(f"always_allow={list(always_allow)} has ids outside the vocabulary [0, {mask.shape[-1]})")
        mask[..., ids] = True
    return mask


def _check_logits(logits: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point torch.Tensor of shape (..., V), got {type(logits)}")
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise ValueError(f"logits must have shape (..., V) with V >= 1, got {tuple(logits.shape)}")
