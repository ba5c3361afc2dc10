"""How a packed path falls back to the plain forward: checked once per model, in eval mode, with one warning.

A packed forward (:mod:`textenv.fast.packing`, :mod:`textenv.fast.prefill`) calls the model in ways its plain
forward is not called: ``inputs_embeds`` with per-episode ``position_ids``, a 4-D block-causal mask, an extra keyword
argument for the attention function, a ``DynamicCache``. A model that cannot take such a call raises one of
:data:`MODEL_CANNOT_PACK`; any other exception is a bug and propagates.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch

#: The exceptions that mean "this model cannot take a packed forward", each for a reason seen in practice:
#: ``TypeError``: its ``forward`` takes no ``inputs_embeds`` / ``position_ids`` / ``logits_to_keep`` / extra keyword;
#: ``KeyError``: it takes ``**kwargs`` but does not pass them on to its attention (the episode layout never arrives);
#: ``AttributeError``: it has no ``get_input_embeddings`` / ``get_output_embeddings`` or no transformers config;
#: ``ValueError``: the episode attention refuses what it does not implement (sliding windows, soft-capping,
#: attention sinks), or transformers refuses the packed mask or cache for this architecture;
#: ``RuntimeError``: torch refuses the packed shapes (a model that assumes its own ``(B, S)`` layout);
#: ``IndexError``: it returns fewer hidden states or cache layers than the packed forward reads.
MODEL_CANNOT_PACK: tuple[type[Exception], ...] = (
    TypeError, KeyError, AttributeError, ValueError, RuntimeError, IndexError,
)


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


def warn_plain_forward(model: torch.nn.Module, packed: str, plain: str, stacklevel: int) -> None:
    """The one warning when ``model`` gets the ``plain`` computation instead of the ``packed`` one (slower, same
    numbers). Callers record their verdict per model, so this runs once per model."""
    warnings.warn(
        f"{type(model).__name__}: {packed} does not reproduce the {plain}; textenv uses the {plain} for this model "
        "(slower, same results; TEXTENV_FAST=0 or fast=False use the plain path everywhere).",
        stacklevel=stacklevel + 1,
    )
