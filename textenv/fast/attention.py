"""Causal attention within each packed episode, as a transformers attention function registered on first use.

In the packed update forward (:func:`textenv.fast.packing.predicting_logits`) every live token of every episode sits
once in one row (:class:`~textenv.fast.packing.EpisodeLayout`). :func:`episode_attention` gathers each episode's
queries, keys and values into a right-padded ``(episodes, heads, longest, head_dim)`` batch and calls causal SDPA,
which needs no mask: a real query never reaches the padding after its episode. Why: rows of several episodes
(transformers' own block-causal mask) left 10-15 % of the trunk's slots empty and attended over rows twice the
longest episode; one ppo-1pass iteration is 5.3 % faster this way.

The function is registered with transformers' ``AttentionInterface`` (a process-wide table) by
:func:`use_episode_attention`, on the first packed forward, never at import.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from transformers import AttentionInterface, PretrainedConfig

if TYPE_CHECKING:
    from textenv.fast.packing import EpisodeLayout

#: The name of :func:`episode_attention` in transformers' attention registry.
EPISODE_ATTENTION = "textenv_episodes"


class EpisodeAttentionUnsupported(ValueError):
    """The model asks the episode attention for something it does not implement (a sliding window, soft-capping,
    attention sinks) or calls it on another layout: such models take the rows layout, with transformers' masks."""


def episode_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Causal attention within each episode of an :class:`EpisodeLayout` row (transformers' attention-function
    interface: ``query`` ``(1, heads, N, head_dim)``, ``key``/``value`` ``(1, kv_heads, N, head_dim)``; returns
    ``(1, N, heads, head_dim)``). The layout comes in as ``textenv_layout`` (the model passes keyword arguments on)."""
    layout: EpisodeLayout = kwargs["textenv_layout"]
    if query.shape[0] != 1 or query.shape[2] != layout.scatter.shape[0]:
        raise EpisodeAttentionUnsupported("textenv's episode attention only runs on one row laid out by pack_episodes")
    unsupported = [name for name in ("sliding_window", "softcap", "s_aux") if kwargs.get(name) is not None]
    if unsupported:
        raise EpisodeAttentionUnsupported(f"textenv's episode attention does not implement {unsupported}")
    episodes, longest = layout.gather.shape
    flat = layout.gather.reshape(-1)

    def by_episode(states: torch.Tensor) -> torch.Tensor:  # (1, h, N, d) -> (E, h, L, d)
        heads, head_dim = states.shape[1], states.shape[3]
        return states[0].index_select(1, flat).view(heads, episodes, longest, head_dim).transpose(0, 1)

    out = torch.nn.functional.scaled_dot_product_attention(
        by_episode(query), by_episode(key), by_episode(value), dropout_p=dropout, is_causal=True, scale=scaling,
        enable_gqa=query.shape[1] != key.shape[1],
    )  # (E, heads, L, head_dim)
    out = out.transpose(1, 2).reshape(episodes * longest, query.shape[1], query.shape[3])
    return out.index_select(0, layout.scatter)[None], None


def episode_attention_registered() -> bool:
    """Whether :func:`episode_attention` is in transformers' process-wide attention registry."""
    return AttentionInterface._global_mapping.get(EPISODE_ATTENTION) is episode_attention


@contextlib.contextmanager
def use_episode_attention(model: torch.nn.Module) -> Iterator[None]:
    """Run the block with ``model``'s attention implementation set to :func:`episode_attention` (registering it
    with transformers on first use), then restore the model's own implementation (sub-configs follow)."""
    if not episode_attention_registered():
        AttentionInterface.register(EPISODE_ATTENTION, episode_attention)
    config = getattr(model, "config", None)
    if not isinstance(config, PretrainedConfig):
        raise AttributeError(f"{type(model).__name__} has no transformers config to choose its attention with")
    before = config._attn_implementation
    config._attn_implementation = EPISODE_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = before
