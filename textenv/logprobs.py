"""log π(a|s) of chosen tokens and the entropy H(π(·|s)) from next-token logits: the one place they are computed.

The engine (env steps, lazy reference), the update forward (:mod:`textenv.scoring`) and the native agents (PTX / SFT /
DPO losses, entropy statistics) take their log-probs and entropies here. Each function has two ways, picked by the
switch of :mod:`textenv.fast` (``fast=None`` follows ``TEXTENV_FAST``, on by default):

- plain: ``F.log_softmax`` over the vocabulary, ``gather`` of the chosen token, ``−Σ p log p``;
- fast: :mod:`textenv.fast.logprobs`, the same numbers (to float32 rounding) computed a cache-sized chunk at a time,
  with a hand-written backward that writes only the gradient the LM head needs.

Both give −inf for a chosen token of logit −inf, and entropies in which tokens of logit −inf add nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from textenv.fast import logprobs as fast_logprobs
from textenv.fast import resolve_fast


def logprobs_and_entropy(
    logits: torch.Tensor, tokens: torch.Tensor, fast: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """log softmax(logits)[token] and the entropy of softmax(logits), per state; differentiable in ``logits``.

    Args:
        logits: ``(..., V)`` floating next-token logits (``-inf`` allowed, not a whole row of it).
        tokens: ``(...)`` long, the chosen token of each state.
        fast: the switch position (:mod:`textenv.fast`); ``None`` follows ``TEXTENV_FAST``.

    Returns:
        ``(...)`` log-probabilities and ``(...)`` entropies, nats, in ``logits``' dtype.
    """
    _check(logits, tokens)
    flat, flat_tokens = logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1)
    if resolve_fast(fast):
        logprob, entropy_ = fast_logprobs.chunked_logprobs_and_entropy(flat, flat_tokens)
    else:
        logprob, entropy_ = _plain_logprobs_and_entropy(flat, flat_tokens)
    return logprob.view(tokens.shape), entropy_.view(tokens.shape)


def chosen_logprobs(logits: torch.Tensor, tokens: torch.Tensor, fast: bool | None = None) -> torch.Tensor:
    """log softmax(logits)[token] per state, ``(..., V), (...) -> (...)``; differentiable in ``logits``."""
    _check(logits, tokens)
    flat, flat_tokens = logits.reshape(-1, logits.shape[-1]), tokens.reshape(-1)
    if resolve_fast(fast):
        return fast_logprobs.chunked_chosen_logprobs(flat, flat_tokens).view(tokens.shape)
    return F.log_softmax(flat, dim=-1).gather(1, flat_tokens[:, None]).squeeze(1).view(tokens.shape)


def entropy(logits: torch.Tensor, fast: bool | None = None) -> torch.Tensor:
    """Entropy of each next-token distribution, ``(..., V) -> (...)`` nats; differentiable in ``logits``."""
    tokens = torch.zeros(logits.shape[:-1], dtype=torch.long, device=logits.device)
    return logprobs_and_entropy(logits, tokens, fast=fast)[1]


def _plain_logprobs_and_entropy(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain way, ``(N, V), (N,) -> (N,), (N,)``. A −inf log-prob is clamped to the lowest finite float in the
    entropy's product, so that 0 · log 0 counts 0 (and its gradient is 0, not NaN)."""
    logp = F.log_softmax(logits, dim=-1)
    finite = logp.clamp(min=torch.finfo(logp.dtype).min)
    return logp.gather(1, tokens[:, None]).squeeze(1), -(logp.exp() * finite).sum(dim=-1)


def _check(logits: torch.Tensor, tokens: torch.Tensor) -> None:
    if logits.dim() < 1 or tokens.shape != logits.shape[:-1]:
        raise ValueError(f"logits must be (..., V) and tokens (...) with the same leading shape; got "
                         f"{tuple(logits.shape)} and {tuple(tokens.shape)}")
