"""Scoring chosen tokens of finished episodes with one forward: the lazy reference's log π_ref of generated tokens,
and (through :mod:`textenv.scoring`) the agents' update forward.

:func:`predicting_logits` is the one place the switch (:mod:`textenv.fast`) acts on these forwards: plain, the model's
forward over the left-padded rows (:func:`plain_predicting_logits`); fast, the episodes packed without padding and
the LM head on the scored states only (:func:`textenv.fast.packing.packed_predicting_logits`, checked once per
model against the plain forward).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from textenv.fast import packing as fast_packing


def predicting_logits(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, targets: torch.Tensor, fast: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """ONE forward giving, for each target token, the logits that predict it and the state's hidden vector.

    Args:
        input_ids, attention_mask: ``(B, S)`` rows as the engine lays them out (padding has mask 0).
        targets: bool ``(B, S)``, the tokens to score. Each must be live and follow a live token of its row
            (the state that predicts it ends there), as generated tokens do.
        fast: packed (:mod:`textenv.fast.packing`) or plain.

    Returns:
        ``(N, V)`` float32 logits and ``(N, H)`` last-layer (final-norm) hidden states, N = ``targets.sum()``,
        in row-major order of ``targets``; differentiable when grad is enabled.
    """
    if fast:
        return fast_packing.packed_predicting_logits(model, input_ids, attention_mask, targets)
    return plain_predicting_logits(model, input_ids, attention_mask, targets)


def plain_predicting_logits(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`predicting_logits` the plain way: the model's forward over the left-padded rows, position ids counting
    the unmasked tokens (as ``generate`` does for left padding), logits at every position."""
    positions = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False,
                output_hidden_states=True)
    keep = targets[:, 1:]  # the state at column j predicts the token at column j + 1
    return out.logits[:, :-1][keep].float(), out.hidden_states[-1][:, :-1][keep]
