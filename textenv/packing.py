"""Scoring tokens with one forward over packed episodes: several episodes per row, no padding.

The engine lays episodes out left-padded, ``(B, S)`` with an attention mask. Scoring chosen tokens of them
(the update's log π_θ of each action, the lazy reference's log π_ref of each generated token) only needs the
logits at the states that predict those tokens. :func:`predicting_logits` packs every row's live tokens into
rows of :data:`PACK_WIDTH_FACTOR` × the longest episode (never wider than all live tokens together), each
episode with its own position ids 0, 1, … (transformers then keeps attention within an episode), and runs the
LM head only on the states it needs: no compute on padding, and no vocabulary-sized work on states nobody reads.

The first call per model checks the packed forward against the model's own padded forward and, should the
model not honour packed position ids (or not take ``inputs_embeds``), warns and uses the padded forward for
that model from then on: slower, same results.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

#: Packed rows are this many times as wide as the longest episode. Attention work grows with the width; padding
#: falls with it. Measured on rollouts of the embedded model (64 episodes): factor 2 fills 85-90 % of the slots
#: with live tokens, as factor 3 did with next-fit packing, at two thirds of its attention work.
PACK_WIDTH_FACTOR = 2
#: Models whose packed forward was checked against the padded one: model -> it agreed.
_AGREES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def predicting_logits(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """ONE forward giving, for each target token, the logits that predict it and the state's hidden vector.

    Args:
        input_ids, attention_mask: ``(B, S)`` rows as the engine lays them out (padding has mask 0).
        targets: bool ``(B, S)``, the tokens to score. Each must be live and follow a live token of its row
            (the state that predicts it ends there), as generated tokens do.

    Returns:
        ``(N, V)`` float32 logits and ``(N, H)`` last-layer (final-norm) hidden states, N = ``targets.sum()``,
        in row-major order of ``targets``; differentiable when grad is enabled.
    """
    agrees = _AGREES.get(model)
    if agrees is None:
        agrees = _packing_agrees(model, input_ids, attention_mask, targets)
        if agrees is not None:
            _AGREES[model] = agrees
    forward = _padded if agrees is False else _packed
    return forward(model, input_ids, attention_mask, targets)


@dataclass
class PackedLayout:
    """Where the live tokens of left-padded rows ``(B, S)`` go when their episodes are packed into ``(rows, width)``.

    index: ``(B, S)`` long, the flat slot (``row * width + column``) of each token, meaningful where ``live``.
    live: ``(B, S)`` bool, the tokens that are packed (attention mask 1).
    input_ids, position_ids: ``(rows, width)`` the packed tokens and their positions within their episode; unused
    slots hold token 0 at position 0 (so each is an episode of its own).
    """

    rows: int
    width: int
    index: torch.Tensor
    live: torch.Tensor
    input_ids: torch.Tensor
    position_ids: torch.Tensor


def pack(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> PackedLayout:
    """Pack every row's live tokens (in their order) into rows of :data:`PACK_WIDTH_FACTOR` × the longest episode (never
    wider than all live tokens together). First fit decreasing: longest episodes first, each into the first row
    with room; an episode never straddles two rows."""
    lengths = attention_mask.sum(dim=1).tolist()
    width = max(min(PACK_WIDTH_FACTOR * max(lengths), sum(lengths)), 1)
    fills: list[int] = []  # tokens in each packed row so far
    starts = [0] * len(lengths)
    for episode in sorted(range(len(lengths)), key=lambda e: -lengths[e]):
        row = next((r for r, fill in enumerate(fills) if fill + lengths[episode] <= width), len(fills))
        if row == len(fills):
            fills.append(0)
        starts[episode] = row * width + fills[row]
        fills[row] += lengths[episode]
    rows = max(len(fills), 1)
    rank = attention_mask.cumsum(dim=1) - 1  # position of each live token within its episode
    index = torch.tensor(starts, device=input_ids.device)[:, None] + rank
    live = attention_mask.bool()
    ids = torch.zeros(rows * width, dtype=torch.long, device=input_ids.device)
    ids[index[live]] = input_ids[live]
    positions = torch.zeros_like(ids)
    positions[index[live]] = rank[live]
    return PackedLayout(rows, width, index, live, ids.view(rows, width), positions.view(rows, width))


def _packed(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    layout = pack(input_ids, attention_mask)
    # inputs_embeds rather than input_ids: transformers would warn that an input with pad ids has no mask.
    out = model(
        inputs_embeds=model.get_input_embeddings()(layout.input_ids), position_ids=layout.position_ids,
        use_cache=False, output_hidden_states=True, logits_to_keep=1,
    )
    states = out.hidden_states[-1].reshape(layout.rows * layout.width, -1)
    hidden = states[layout.index[targets] - 1]  # the state at the token before each target
    return model.get_output_embeddings()(hidden).float(), hidden


def _padded(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's plain forward over the left-padded rows (the LM head from the first target's column on)."""
    columns = torch.nonzero(targets.any(dim=0)).squeeze(1)
    first = max(int(columns[0]), 1) if len(columns) else input_ids.shape[1] - 1
    positions = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False,
                output_hidden_states=True, logits_to_keep=input_ids.shape[1] - first + 1)
    keep = targets[:, first:]  # logits[:, j] and hidden[:, j] predict column first + j
    return out.logits[:, :-1][keep].float(), out.hidden_states[-1][:, first - 1 : -1][keep]


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Run the block in eval mode (no dropout: two forwards of one input agree), then give every submodule back
    its own training flag (``model.train(flag)`` would set one flag on all of them)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


@torch.no_grad()
def _packing_agrees(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, targets: torch.Tensor
) -> bool | None:
    """Whether the packed forward reproduces the padded one (log-probs within 1e-3 nats) on up to 8 rows with
    targets, in eval mode (no dropout); ``None`` when no row has a target (nothing to compare yet)."""
    rows = torch.nonzero(targets.any(dim=1)).squeeze(1)[:8]
    if len(rows) == 0:
        return None
    sample = (input_ids[rows], attention_mask[rows], targets[rows])
    try:
        with eval_mode(model):
            packed = _packed(model, *sample)[0].log_softmax(dim=-1)
            padded = _padded(model, *sample)[0].log_softmax(dim=-1)
        agrees = packed.shape == padded.shape and bool((packed - padded).abs().max() <= 1e-3)
    except (AttributeError, TypeError, ValueError, RuntimeError):  # e.g. a model that takes no inputs_embeds
        agrees = False
    if not agrees:
        warnings.warn(
            f"{type(model).__name__}: the packed forward (per-episode position ids, LM head on scored tokens only) "
            "does not reproduce the padded forward; textenv uses the padded forward for this model (slower, same "
            "results).",
            stacklevel=3,
        )
    return agrees
