"""The prompt prefill with the episodes packed: no compute on left padding, KV entries copied to their cache slots.

The engine lays B prompts out left-padded, ``(B, S)``, and fills a static KV cache from them before the first step.
About half of a batch of the built-in prompts is left padding. :func:`prefill_packed` runs the live tokens packed
into rows (:func:`textenv.fast.packing.pack`: per-episode position ids, transformers' block-causal mask) through a
fresh ``DynamicCache``, then copies each token's keys and values to its row and column of the static cache, where the
padded prefill would have written them. Measured: ``env.reset()`` with 64 built-in prompts, 121 → 72 ms.

The first call per model runs both prefills (in eval mode) and compares next-token log-probs (1e-3 nats), hidden
states and live KV entries (1e-4); a model that disagrees, or cannot take the packed call, gets one warning and the
padded prefill from then on. Caches with sliding-window (or other non-plain) layers always prefill padded.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from transformers import DynamicCache, PreTrainedModel, StaticCache
from transformers.cache_utils import DynamicLayer, StaticLayer
from transformers.masking_utils import create_causal_mask

from textenv.fast.fallback import MODEL_CANNOT_PACK, eval_mode, warn_plain_forward
from textenv.fast.packing import pack

#: Models whose packed prefill was checked against the padded one: model -> it agreed.
_PACKED_PREFILL_AGREES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

#: ``(next-token logits (B, V) float32, last-layer hidden states (B, H))`` of a prefill.
Prefilled = tuple[torch.Tensor, torch.Tensor]


@torch.no_grad()
def prefill_packed(
    model: PreTrainedModel,
    cache: StaticCache,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    padded_prefill: Callable[[StaticCache], Prefilled],
    cache_keyword: str,
) -> Prefilled:
    """Fill columns ``[0, S)`` of the empty ``cache`` from left-padded rows ``(B, S)``, packed when this model's packed
    prefill was checked to give what ``padded_prefill`` (the engine's plain prefill of these rows into a given
    cache) gives; else by ``padded_prefill``. ``cache_keyword``: the name the model takes its KV cache under.

    Returns each row's next-token logits ``(B, V)`` (float32) and last-layer hidden state ``(B, H)``.
    """
    agrees = _PACKED_PREFILL_AGREES.get(model)
    if agrees:
        packed = _packed_prefill(model, cache, input_ids, attention_mask, cache_keyword)
        if packed is not None:
            return packed
    if agrees is not None:
        return padded_prefill(cache)
    # First call for this model: run both, in eval mode (dropout would make any two forwards differ), and compare.
    scratch = StaticCache(config=model.config, max_cache_len=input_ids.shape[1])
    with eval_mode(model):
        packed = _packed_prefill(model, scratch, input_ids, attention_mask, cache_keyword)
        padded = padded_prefill(cache)
    agrees = packed is not None and _same_prefill(packed, padded, scratch, cache, attention_mask)
    _PACKED_PREFILL_AGREES[model] = agrees
    if not agrees and _plain_layers(cache):  # sliding-window caches are a known limit: no warning for them
        warn_plain_forward(model, "the packed prefill (per-episode position ids, KV entries copied to their columns)",
                           "padded prefill", stacklevel=5)
    return padded


def _plain_layers(cache: StaticCache) -> bool:
    """Whether every layer of ``cache`` is a plain full-length static layer (no sliding window)."""
    return all(type(layer) is StaticLayer for layer in cache.layers)


def _packed_prefill(
    model: PreTrainedModel,
    cache: StaticCache,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    cache_keyword: str,
) -> Prefilled | None:
    """:func:`prefill_packed` with the episodes packed (:func:`textenv.fast.packing.pack`), block-causal attention, a
    fresh :class:`~transformers.DynamicCache`, and each token's KV entries then copied to its row and column of
    ``cache``. ``None`` when this model or cache cannot take that route (a layer with a sliding window, a model
    without ``inputs_embeds`` or 4-D masks: :data:`~textenv.fast.fallback.MODEL_CANNOT_PACK`)."""
    if not _plain_layers(cache):
        return None
    layout = pack(input_ids, attention_mask)
    packed_cache = DynamicCache(config=model.config)
    try:
        embeds = model.get_input_embeddings()(layout.input_ids)
        # The block-causal mask (each packed episode attends to itself only) in the format of the model's
        # attention implementation; transformers builds it from the position ids only when no cache is passed.
        mask = create_causal_mask(config=model.config, inputs_embeds=embeds, attention_mask=None, cache=None,
                                  position_ids=layout.position_ids)
        out = model(inputs_embeds=embeds, attention_mask=mask, position_ids=layout.position_ids,
                    **{cache_keyword: packed_cache}, use_cache=True, output_hidden_states=True, logits_to_keep=1)
        last = layout.index[:, -1]  # rows are right-aligned: column S-1 holds each episode's last token
        hidden = out.hidden_states[-1].flatten(0, 1)[last]
        logits = model.get_output_embeddings()(hidden).float()
    except MODEL_CANNOT_PACK:
        return None
    if len(packed_cache.layers) != len(cache.layers) or not all(
        type(layer) is DynamicLayer for layer in packed_cache.layers
    ):
        return None
    # Only now touch ``cache``: a failure above leaves it empty for the padded prefill.
    slots = layout.index[layout.live]  # (N,) packed slot of every live token, row-major over (B, S)
    rows, cols = torch.nonzero(layout.live, as_tuple=True)
    for layer, packed_layer in zip(cache.layers, packed_cache.layers):
        keys, values = packed_layer.keys, packed_layer.values  # (rows, heads, width, head_dim)
        if not layer.is_initialized:
            layer.lazy_initialization(keys.new_empty(input_ids.shape[0], *keys.shape[1:2], 1, keys.shape[-1]),
                                      values.new_empty(input_ids.shape[0], *values.shape[1:2], 1, values.shape[-1]))
        layer.keys[rows, :, cols] = keys.transpose(1, 2).flatten(0, 1)[slots]
        layer.values[rows, :, cols] = values.transpose(1, 2).flatten(0, 1)[slots]
        layer.cumulative_length.fill_(input_ids.shape[1])  # the next update writes column S
    return logits, hidden


def _same_prefill(
    packed: Prefilled,
    padded: Prefilled,
    packed_cache: StaticCache,
    padded_cache: StaticCache,
    attention_mask: torch.Tensor,
) -> bool:
    """Whether two prefills agree: next-token log-probs (1e-3 nats), hidden states and live KV entries (1e-4)."""
    width = attention_mask.shape[1]
    live = attention_mask.bool()
    if not (
        torch.allclose(packed[0].log_softmax(dim=-1), padded[0].log_softmax(dim=-1), atol=1e-3)
        and torch.allclose(packed[1].float(), padded[1].float(), atol=1e-4, rtol=1e-4)
    ):
        return False
    for a, b in zip(packed_cache.layers, padded_cache.layers):
        for x, y in ((a.keys, b.keys), (a.values, b.values)):
            x, y = x[:, :, :width].transpose(1, 2)[live], y[:, :, :width].transpose(1, 2)[live]
            if not torch.allclose(x.float(), y.float(), atol=1e-4, rtol=1e-4):
                return False
    return True
