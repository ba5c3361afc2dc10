"""The engine's cached forward: one call of the model that writes a static KV cache at given columns.

Caches are preallocated :class:`~transformers.StaticCache` objects: each step writes one column in place, so a step's
cost does not grow with the length generated so far (a growing cache would copy itself every step). The same call
is the plain path and the fast path of the switch (:mod:`textenv.fast`): only the prompt prefill has a packed form.
"""

from __future__ import annotations

import functools
import inspect

import torch
from transformers import PreTrainedModel, StaticCache
from transformers.cache_utils import StaticLayer


@torch.no_grad()
def cached_forward(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    cache: StaticCache,
    cache_position: torch.Tensor,
    logits_to_keep: int,
    keep_hidden: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One cached forward writing ``cache`` at columns ``cache_position``.

    Returns float32 logits of the last ``logits_to_keep`` positions, ``(B, logits_to_keep, V)``, and, with
    ``keep_hidden``, the last-layer hidden state at the last position ``(B, H)``.
    """
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        **{cache_keyword(model): cache},
        cache_position=cache_position,
        use_cache=True,
        logits_to_keep=logits_to_keep,
        output_hidden_states=keep_hidden,
    )
    return out.logits.float(), (out.hidden_states[-1][:, -1] if keep_hidden else None)


def plain_static_layers(*caches: StaticCache | None) -> bool:
    """Whether every layer of the given caches is a plain full-length static layer, whose rows the engine may write
    in place (sliding-window or other layer kinds are refilled whole)."""
    return all(type(layer) is StaticLayer for cache in caches if cache is not None for layer in cache.layers)


def cache_keyword(model: PreTrainedModel) -> str:
    """The name ``model``'s forward takes the KV cache under (see :func:`_cache_argument`); a PEFT wrapper, whose
    ``forward`` only takes ``**kwargs``, passes it to the transformers model under it."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _cache_argument(type(base))


@functools.cache
def _cache_argument(model_class: type) -> str:
    """The name ``model_class.forward`` takes the KV cache under: ``cache`` (transformers >= 5.2x, where
    ``past_key_values`` is deprecated and warns on every call) or ``past_key_values`` (older releases)."""
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"
