"""The update forward: score a rollout's actions again, with gradients, in ONE forward over its episodes.

Every on-policy agent plays B episodes (:func:`textenv.rollout.collect_rollout`), then in its update needs
log π_θ(a_t|s_t) with gradients, the entropy of π_θ(·|s_t) and, for a value head on the trunk, the last-layer hidden
state at s_t. :func:`score_rollout` gives all three from one forward over prompt + completion per episode.

The forward follows the switch of :mod:`textenv.fast`: by default the setting the models layer recorded for the model
(an env's ``fast=`` argument reaches its policy and reference this way), else ``TEXTENV_FAST``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from transformers import PretrainedConfig, PreTrainedModel

from textenv.engine.scoring import predicting_logits
from textenv.fast import model_fast, resolve_fast
from textenv.logprobs import logprobs_and_entropy
from textenv.validation import InputError

if TYPE_CHECKING:
    from textenv.rollout import Rollout


@dataclass
class ActionScores:
    """What the update's forward gives per action, for B episodes of at most T actions.

    logprobs: ``(B, T)`` log π_θ(a_t|s_t) in nats, differentiable; 0 where ``action_mask`` is 0.
    entropy: ``(B, T)`` H[π_θ(·|s_t)] in nats over the whole vocabulary; differentiable only when asked for.
    hidden: ``(B, T, H)`` the last-layer (final-norm) hidden state at s_t, what a value head on the trunk reads
    (the same tensor as ``Rollout.hidden_states``, with gradients); 0 where not taken.
    """

    logprobs: torch.Tensor
    entropy: torch.Tensor
    hidden: torch.Tensor


def score_actions(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_width: int,
    action_mask: torch.Tensor,
    entropy_grad: bool = False,
    fast: bool | None = None,
) -> ActionScores:
    """ONE forward over every episode's prompt + completion, giving log π_θ, entropy and hidden state per action.

    ``input_ids`` / ``attention_mask`` ``(B, P + T)`` as the engine laid them out (``Rollout``); action t of row b
    is ``input_ids[b, P + t]``, taken where ``action_mask[b, t]`` is 1. ``fast``: the switch of :mod:`textenv.fast`
    (``None``: the setting recorded for ``model``, else ``TEXTENV_FAST``).

    With ``fast``, the forward runs on the episodes packed without padding and the LM head only on states where an
    action was taken (:func:`textenv.fast.packing.packed_predicting_logits`): a left-padded batch spends about a
    quarter of its trunk compute on padding, and its vocabulary-sized work (LM head, log-softmax, their backward) on
    every state. Without, it is the model's plain forward over the left-padded rows.
    """
    fast = model_fast(model) if fast is None else resolve_fast(fast)
    taken = action_mask.bool()
    targets = torch.zeros_like(attention_mask, dtype=torch.bool)
    targets[:, prompt_width:] = taken
    logits, hidden = predicting_logits(model, input_ids, attention_mask, targets, fast)  # (N, V), (N, H)
    logp, token_entropy = logprobs_and_entropy(logits, input_ids[targets], fast)  # (N,), (N,)
    if not entropy_grad:
        token_entropy = token_entropy.detach()
    B, T = action_mask.shape
    logprobs = logits.new_zeros(B, T)
    logprobs[taken] = logp
    entropies = logits.new_zeros(B, T)
    entropies[taken] = token_entropy
    hidden_bt = hidden.new_zeros(B, T, hidden.shape[-1])
    hidden_bt[taken] = hidden
    return ActionScores(logprobs=logprobs, entropy=entropies, hidden=hidden_bt)


def score_rollout(
    model: PreTrainedModel,
    rollout: Rollout,
    rows: torch.Tensor | None = None,
    entropy_grad: bool = False,
    fast: bool | None = None,
) -> ActionScores:
    """:func:`score_actions` on a rollout's episodes: all of them, or the long indices ``rows`` (a minibatch)."""
    index = slice(None) if rows is None else rows
    return score_actions(model, rollout.input_ids[index], rollout.attention_mask[index], rollout.prompt_width,
                         rollout.action_mask[index], entropy_grad=entropy_grad, fast=fast)


def enable_gradient_checkpointing(model: PreTrainedModel) -> None:
    """Recompute each transformer block's activations during the backward of the update forward instead of keeping
    them (transformers' ``gradient_checkpointing_enable``, non-reentrant ``torch.utils.checkpoint``).

    transformers checkpoints a block only while the model is in training mode, which it is during an agent's update
    forward only: the env's rollout runs the model in eval mode, with its KV cache, exactly as without. The
    recompute (in the backward, after the forward has returned) runs with the attention implementation the block's
    forward had: the packed update forward of :mod:`textenv.fast` sets its episode attention only for the duration
    of the forward.
    """
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise InputError(f"gradient_checkpointing=True: the model ({type(model).__name__}) does not support "
                         "gradient checkpointing; set gradient_checkpointing=False")
    config = model.config

    def contexts() -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
        """(forward, recompute) contexts of one checkpointed block; called when the block's forward runs."""
        return contextlib.nullcontext(), attention_implementation(config, config._attn_implementation)

    kwargs = {"use_reentrant": False, "context_fn": contexts}
    if hasattr(model, "activation_checkpointing_enable"):  # newer transformers: gradient_checkpointing_enable is deprecated
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


@contextlib.contextmanager
def attention_implementation(config: PretrainedConfig, implementation: str | None) -> Iterator[None]:
    """Run with ``config._attn_implementation`` set to ``implementation``, then restore it."""
    before = config._attn_implementation
    config._attn_implementation = implementation
    try:
        yield
    finally:
        config._attn_implementation = before
