"""Filling the engine's KV caches from prompts: all rows at once (a full prefill), or only restarting rows.

:func:`prefill_cache` is the one place the switch (:mod:`textenv.fast`) acts on the prefill: plain, one cached forward
over the left-padded rows; fast, :func:`textenv.fast.prefill.prefill_packed` (no compute on left padding, checked
once per model against the plain prefill).
"""

from __future__ import annotations

import functools

import torch
from transformers import PreTrainedModel, StaticCache

from textenv.engine.cache import cache_keyword, cached_forward
from textenv.fast import prefill as fast_prefill


def prefill_cache(
    model: PreTrainedModel, cache: StaticCache, input_ids: torch.Tensor, attention_mask: torch.Tensor, fast: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill columns ``[0, S)`` of an empty ``cache`` from left-padded rows ``(B, S)``; return each row's next-token
    logits ``(B, V)`` (float32) and last-layer hidden state ``(B, H)``. ``fast``: packed (checked) or plain."""
    if not fast:
        return padded_prefill(model, input_ids, attention_mask, cache)
    plain = functools.partial(padded_prefill, model, input_ids, attention_mask)
    return fast_prefill.prefill_packed(model, cache, input_ids, attention_mask, plain, cache_keyword(model))


def padded_prefill(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: StaticCache
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`prefill_cache` as one cached forward over the left-padded rows (the plain prefill)."""
    positions = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    columns = torch.arange(input_ids.shape[1], device=input_ids.device)
    logits, hidden = cached_forward(model, input_ids, attention_mask, positions, cache, columns, 1, keep_hidden=True)
    return logits[:, -1], hidden


def prefill_rows(
    model: PreTrainedModel,
    cache: StaticCache,
    index: torch.Tensor,
    ids: torch.Tensor,
    mask: torch.Tensor,
    width: int,
    keep_hidden: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Prefill rows ``index`` only: run ``ids``/``mask`` ``(R, L)`` (left-padded prompts) through ``model`` with a
    small cache of their own and copy its KV entries into ``cache`` at those rows' last L of ``width`` columns.
    Every other row's entries stay. Returns the next-token logits ``(R, V)`` (and hidden state)."""
    own_cache = StaticCache(config=model.config, max_cache_len=ids.shape[1])
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    logits, hidden = cached_forward(model, ids, mask, positions, own_cache,
                                    torch.arange(ids.shape[1], device=ids.device), 1, keep_hidden=keep_hidden)
    for layer, own in zip(cache.layers, own_cache.layers):
        layer.keys[index, :, width - ids.shape[1] : width] = own.keys
        layer.values[index, :, width - ids.shape[1] : width] = own.values
    return logits[:, -1], hidden
