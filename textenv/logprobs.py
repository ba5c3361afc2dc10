"""log π(a|s) of chosen tokens and the entropy H(π(·|s)) from next-token logits: the one place they are computed.

The engine (env steps, lazy reference), the update forward (:mod:`textenv.scoring`) and the native agents (PTX / SFT /
DPO losses, entropy statistics) take their log-probs and entropies here. Each function has two ways, picked by the
switch of :mod:`textenv.fast` (``fast=None`` follows ``TEXTENV_FAST``, on by default):

- plain: ``F.log_softmax`` over the vocabulary, ``gather`` of the chosen token, ``−Σ p log p``;
- fast: :mod:`textenv.fast.logprobs`, the same numbers (to float32 rounding) computed a cache-sized chunk at a time,
  with a hand-written backward that writes only the gradient the LM head needs.

Both give −inf for a chosen token of logit −inf, and entropies in which tokens of logit −inf add nothing.

For a policy written by hand: :func:`observation_logprobs` scores TextGen-v0 observations exactly (left padding and
its position ids handled, with gradients; :func:`position_ids` is the rule), and :class:`OffPolicyActionMonitor` is
how the env notices actions that do not come from its own policy (whose KL it measures).
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from textenv.fast import logprobs as fast_logprobs
from textenv.fast import model_fast, resolve_fast
from textenv.validation import InputError


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


# ---------------------------------------------------------------------------------------------- observations
def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """The position of every token of a left-padded batch, ``(B, W) -> (B, W)`` long: 0 at each row's first real
    token, counting only tokens of mask 1 (padding gets 0). TextGen-v0's observations are left-padded, so a model
    called without these positions sees each row shifted by its padding (on the embedded GPT-2 that moves
    log π(a|s) by up to 0.57 nats); with them every row is scored as if it stood alone."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def observation_logits(policy: torch.nn.Module, observation: Mapping[str, Any]) -> torch.Tensor:
    """Next-token logits of ``policy`` at TextGen-v0 observations, with gradients: float32 ``(B, V)`` for a batch
    (``input_ids`` and ``attention_mask`` of shape ``(B, W)``, as the vector env returns them) or ``(V,)`` for one
    observation ``(W,)`` (``gym.make``). Runs ``policy(input_ids, attention_mask, position_ids)`` with the
    positions of :func:`position_ids`; observations are right-aligned, so the last column predicts the next token.
    Numpy arrays or tensors; they are moved to the policy's device."""
    ids, mask, single = _observation_tensors(observation, _device(policy))
    out = policy(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False,
                 logits_to_keep=1)
    logits = out.logits[:, -1].float()
    return logits[0] if single else logits


def observation_logprobs(
    policy: torch.nn.Module, observation: Mapping[str, Any], actions: Any, fast: bool | None = None
) -> torch.Tensor:
    """log π(a | s) of ``actions`` at TextGen-v0 observations under ``policy``, in nats, WITH gradients: what a
    hand-written policy-gradient loss needs (REINFORCE: ``-(advantage * observation_logprobs(...)).sum()``).

    Args:
        policy: a causal LM, e.g. the env's own ``env.unwrapped.policy`` (then these are, to float32 rounding, the
            log-probs the env records in ``info["logprob"]``) or a network of your own with the same tokenizer.
        observation: ``{"input_ids", "attention_mask"}`` as ``reset``/``step`` return them: ``(B, W)`` or ``(W,)``,
            left-padded (the position ids are derived from the mask: :func:`position_ids`).
        actions: token ids, ``(B,)`` (or one int for a ``(W,)`` observation); numpy, a tensor, a list or an int.
        fast: the switch of :mod:`textenv.fast` for the log-softmax; ``None`` follows the one recorded for
            ``policy`` (the env's setting for the env's policy), else ``TEXTENV_FAST``.

    Returns:
        ``(B,)`` float32 log-probabilities (a 0-d tensor for one observation), differentiable in the policy's
        parameters.
    """
    logits = observation_logits(policy, observation)
    tokens = _action_tensor(actions, logits)
    return chosen_logprobs(logits, tokens, model_fast(policy) if fast is None else fast)


def _device(policy: torch.nn.Module) -> torch.device:
    parameter = next(policy.parameters(), None)
    return torch.device("cpu") if parameter is None else parameter.device


def _observation_tensors(observation: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """``(B, W)`` long ids and mask on ``device`` from an observation dict, and whether it was a single ``(W,)``."""
    if not isinstance(observation, Mapping) or not {"input_ids", "attention_mask"} <= set(observation):
        raise InputError("observation must be the dict reset()/step() return, with 'input_ids' and "
                         f"'attention_mask'; got {type(observation).__name__}")
    ids, mask = (torch.as_tensor(np.asarray(observation[key]) if not isinstance(observation[key], torch.Tensor)
                                 else observation[key]) for key in ("input_ids", "attention_mask"))
    if ids.shape != mask.shape or ids.dim() not in (1, 2) or ids.shape[-1] == 0:
        raise InputError(f"observation['input_ids'] and ['attention_mask'] must both be (W,) or (B, W); got "
                         f"{tuple(ids.shape)} and {tuple(mask.shape)}")
    if ids.dtype.is_floating_point or mask.dtype.is_floating_point or not bool((mask[..., -1] == 1).all()):
        raise InputError("observation must hold integer token ids and a 0/1 mask, right-aligned (last column 1), "
                         "as TextGen-v0 returns them")
    single = ids.dim() == 1
    ids, mask = (ids[None] if single else ids), (mask[None] if single else mask)
    return ids.to(device, torch.long), mask.to(device, torch.long), single


def _action_tensor(actions: Any, logits: torch.Tensor) -> torch.Tensor:
    """``actions`` as a long tensor of ``logits``' leading shape, on its device (:class:`InputError` otherwise)."""
    tokens = actions if isinstance(actions, torch.Tensor) else torch.as_tensor(np.asarray(actions))
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise InputError(f"actions must be integer token ids, got dtype {tokens.dtype}")
    tokens = tokens.reshape(logits.shape[:-1]) if tokens.numel() == logits.shape[:-1].numel() else tokens
    if tokens.shape != logits.shape[:-1]:
        raise InputError(f"actions must hold one token id per observation, shape {tuple(logits.shape[:-1])}; got "
                         f"{tuple(tokens.shape)}")
    if bool(((tokens < 0) | (tokens >= logits.shape[-1])).any()):
        raise InputError(f"actions must be token ids in [0, {logits.shape[-1]}) (the policy's vocabulary)")
    return tokens.to(logits.device, torch.long)


# ---------------------------------------------------------------------------------------------- off-policy actions
class OffPolicyActionsWarning(UserWarning):
    """The env's actions look drawn from another distribution than the env's policy π_θ (see
    :class:`OffPolicyActionMonitor`). Silence it with ``warnings.filterwarnings("ignore",
    category=OffPolicyActionsWarning)`` when that is what you mean (e.g. a person typing the tokens)."""


class OffPolicyActionMonitor:
    """Warns once when the actions an env receives cannot have been sampled from its own policy π_θ.

    The env pays R = r_φ − β·Σ_t KL_t with KL_t estimated from log π_θ(a_t|s_t) − log π_ref(a_t|s_t): the KL of the
    env's policy, which is the KL of the actor only when the actor samples from π_θ. What can be detected for free
    (from the log π_θ(a_t|s_t) the env records anyway) is an actor that keeps choosing tokens π_θ almost never
    samples. A token of probability below ε = 0.005 / V is drawn from π_θ with probability below V·ε = 0.005 (at
    most V tokens, each under ε), so among n ≥ 64 actions sampled from π_θ, a quarter or more below ε has
    probability below 1e-20: a block of ``block`` actions with at least ``min_fraction`` of them below ε warns
    (:class:`OffPolicyActionsWarning`), once per monitor. Greedy, top-k or low-temperature sampling from π_θ picks
    likelier tokens still; an actor close to π_θ (e.g. a fine-tuned copy) is not detected (its KL is then only
    approximately the env's), nor is one that differs from π_θ only among likely tokens.
    """

    def __init__(self, vocab_size: int, block: int = 64, min_fraction: float = 0.25) -> None:
        self.log_threshold = math.log(0.005 / vocab_size)  # log ε
        self.block, self.min_fraction = block, min_fraction
        self.warned = False
        self._actions = self._surprising = 0

    def observe(self, logprob: np.ndarray, active: np.ndarray | torch.Tensor) -> None:
        """Count one step: ``logprob`` ``(B,)`` log π_θ(a_t|s_t) as the env recorded it, ``active`` ``(B,)`` bool the
        rows that took an action (a tensor is read only while needed). Costs nothing once it has warned."""
        if self.warned:
            return
        active = active.cpu().numpy() if isinstance(active, torch.Tensor) else np.asarray(active, dtype=bool)
        self._actions += int(active.sum())
        self._surprising += int((logprob[active] < self.log_threshold).sum())
        if self._actions < self.block:
            return
        if self._surprising >= self.min_fraction * self._actions:
            self.warned = True
            warnings.warn(
                f"{self._surprising} of the last {self._actions} actions had probability below "
                f"{math.exp(self.log_threshold):.1e} under the env's policy π_θ: they do not look sampled from it. "
                "The env's KL penalty (and info['logprob']) measure π_θ = env.unwrapped.policy, not the network "
                "that chose these actions; call env.unwrapped.set_policy(actor) to make the env measure your actor "
                "(docs/rl-framing.md, 'Whose KL?'). This warning is shown once.",
                OffPolicyActionsWarning, stacklevel=_outside_stacklevel(),
            )
        self._actions = self._surprising = 0


def _outside_stacklevel() -> int:
    """The ``stacklevel`` (for a ``warnings.warn`` in the caller) of the first frame outside textenv and Gymnasium:
    the line of the user's code that stepped the env, whatever wrappers lie between."""
    import gymnasium  # only when warning

    inside = tuple(os.path.dirname(os.path.abspath(module.__file__)) + os.sep for module in (gymnasium,)) + (
        os.path.dirname(os.path.abspath(__file__)) + os.sep,)
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(inside):
        frame, level = frame.f_back, level + 1
    return level
