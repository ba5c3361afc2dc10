"""Setting up the models an env runs, in ONE call: policy, tokenizer, dtype, LoRA adapters, dropout off, reference.

    setup = load_models(model="textenv/default", kl_coef=0.05, lora=None, device="cpu")
    setup.policy, setup.tokenizer, setup.reference

Data flows one way: the env calls :func:`load_models` and keeps what it returns; nothing here knows the env. The
reference π_ref is a frozen copy of the policy, the policy with its LoRA adapters disabled (no second copy of the
weights), a model the caller gives, or ``None`` when β = 0 (no KL penalty, no reference).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from textenv.fast import resolve_fast, set_model_fast
from textenv.models.loading import (
    DEFAULT_MODEL,
    frozen_copy,
    load_causal_lm,
    load_tokenizer,
    locate_model,
    resolve_device,
)
from textenv.models.lora import AdapterDisabledReference, apply_lora, is_peft_model


@dataclass
class ModelSetup:
    """What :func:`load_models` set up.

    policy: the trainable causal LM π_θ on ``device`` (a peft model with LoRA), dropout off.
    tokenizer: left padding, with a pad token (EOS when it had none).
    reference: the frozen π_ref (no gradients, eval mode), or ``None`` when no KL penalty needs one.
    device: where the policy (and a copied reference) live.
    fast: the switch position of :mod:`textenv.fast`, recorded for the policy and the reference.
    """

    policy: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    reference: torch.nn.Module | None
    device: torch.device
    fast: bool


def check_model_sources(model: str | os.PathLike | torch.nn.Module, tokenizer: Any) -> None:
    """Find the model and tokenizer names or directories before anything loads (:class:`InputError`
    ``"model not found: ..."`` otherwise); loaded objects need no finding."""
    if not isinstance(model, torch.nn.Module):
        locate_model(model, "model")
    if isinstance(tokenizer, (str, os.PathLike)):
        locate_model(tokenizer, "tokenizer")


def load_models(
    model: str | os.PathLike | torch.nn.Module = DEFAULT_MODEL,
    tokenizer: str | os.PathLike | PreTrainedTokenizerBase | None = None,
    reference: torch.nn.Module | None = None,
    kl_coef: float = 0.05,
    lora: dict[str, Any] | bool | Any = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "auto",
    fast: bool | None = None,
) -> ModelSetup:
    """Load (or take) the policy and its tokenizer, add LoRA adapters, switch dropout off, and make the reference.

    Args:
        model: a name or ``save_pretrained`` directory (loaded with ``dtype`` and, with ``fast``, the faster
            tanh-GELU: :func:`~textenv.models.loading.load_causal_lm`), or a loaded model, used as it is.
        tokenizer: a name, directory or tokenizer; default: ``model``'s.
        reference: an explicit frozen reference (moved to ``device``); default: a frozen copy of the policy, or
            with ``lora`` the policy with its adapters disabled.
        kl_coef: β; with β = 0 no reference is made (``reference`` is ignored).
        lora: ``True`` or ``peft.LoraConfig`` keyword arguments (or a ``LoraConfig``) to train LoRA adapters.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda:0"``...
        fast: the switch of :mod:`textenv.fast` (``None`` follows ``TEXTENV_FAST``, on by default).
    """
    fast = resolve_fast(fast)
    target = resolve_device(device)
    tokens = resolve_tokenizer(tokenizer, model)
    policy = model if isinstance(model, torch.nn.Module) else load_causal_lm(model, target, dtype, fast=fast)
    policy.to(target)
    if lora:
        policy = apply_lora(policy, lora)
    disable_dropout(policy)
    frozen = _reference(policy, reference, kl_coef, target)
    for module in (policy, frozen):
        if module is not None:
            set_model_fast(module, fast)
    return ModelSetup(policy=policy, tokenizer=tokens, reference=frozen, device=target, fast=fast)


def _reference(
    policy: torch.nn.Module, reference: torch.nn.Module | None, kl_coef: float, device: torch.device
) -> torch.nn.Module | None:
    """π_ref for :func:`load_models`: ``None`` when β = 0, else frozen (eval mode, no gradients)."""
    if kl_coef <= 0:
        return None
    if is_peft_model(policy) and reference is None:
        return AdapterDisabledReference(policy)
    frozen = frozen_copy(policy) if reference is None else reference.to(device).eval()
    frozen.requires_grad_(False)
    return frozen


def disable_dropout(model: torch.nn.Module) -> None:
    """Set every dropout probability to 0 so rollout and update log-probs agree (as TRL does)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def resolve_tokenizer(tokenizer: Any, model: Any) -> PreTrainedTokenizerBase:
    """The tokenizer to use: ``tokenizer`` (given with a pad token: EOS when it has none), loaded from its name, or
    ``model``'s (a loaded model's ``config._name_or_path``, else the embedded default's)."""
    if tokenizer is None:
        if isinstance(model, torch.nn.Module):
            source = getattr(model.config, "_name_or_path", "") or DEFAULT_MODEL
            return load_tokenizer(source)
        return load_tokenizer(model)
    if isinstance(tokenizer, PreTrainedTokenizerBase):
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer
    return load_tokenizer(tokenizer)
