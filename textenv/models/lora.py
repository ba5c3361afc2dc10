"""LoRA mode: train low-rank adapters on the policy; the reference is the same model with adapters off.

One copy of the base weights serves both π_θ (adapters on) and π_ref (adapters disabled), so the KL
penalty costs no second model in memory (Hu et al. 2021; the TRL/peft "ref = disabled adapters" trick).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from transformers import PreTrainedModel

from textenv.validation import InputError, check_int, check_number


def check_lora(lora: Any) -> None:
    """``lora`` must be ``None``/``False`` (off), ``True`` (defaults), a dict of ``peft.LoraConfig`` keyword
    arguments or a ``LoraConfig``; checked before any model loads (:class:`InputError` otherwise)."""
    if lora is None or isinstance(lora, bool):
        return
    LoraConfig = _lora_config_class()
    if isinstance(lora, LoraConfig):
        return
    if not isinstance(lora, Mapping):
        raise InputError(f"lora={lora!r} must be True, False/None, a dict of peft.LoraConfig keyword arguments "
                         "(e.g. {'r': 8, 'lora_alpha': 16}) or a peft.LoraConfig")
    known = {f.name for f in dataclasses.fields(LoraConfig)}
    unknown = sorted(set(map(str, lora)) - known)
    if unknown:
        raise InputError(f"lora has unknown key(s) {unknown}; peft.LoraConfig takes e.g. r, lora_alpha, lora_dropout, "
                         "target_modules, bias, modules_to_save")
    if "r" in lora:
        check_int("lora['r']", lora["r"], minimum=1)
    if "lora_alpha" in lora:
        check_number("lora['lora_alpha']", lora["lora_alpha"], low=0, low_open=True)
    if "lora_dropout" in lora:
        check_number("lora['lora_dropout']", lora["lora_dropout"], low=0, high=1, high_open=True)


def _lora_config_class() -> type:
    try:
        from peft import LoraConfig
    except ImportError:  # pragma: no cover - peft is in the `lora` extra
        raise InputError("lora=... needs peft: pip install 'textenv[lora]'") from None
    return LoraConfig


def apply_lora(model: PreTrainedModel, lora: Any) -> torch.nn.Module:
    """Wrap ``model`` in a peft ``PeftModelForCausalLM``; ``lora`` is ``True``, ``LoraConfig`` kwargs or a
    ``LoraConfig`` (see :func:`check_lora`).

    Defaults: r=8, lora_alpha=16, lora_dropout=0, peft's default target modules for the architecture. A config
    peft refuses (e.g. ``target_modules`` the model does not have) raises :class:`InputError` naming ``lora``.
    """
    check_lora(lora)
    LoraConfig = _lora_config_class()
    from peft import get_peft_model

    try:
        if isinstance(lora, LoraConfig):
            config = lora
        else:
            options = {"task_type": "CAUSAL_LM", "r": 8, "lora_alpha": 16, "lora_dropout": 0.0,
                       **({} if lora is True else dict(lora))}
            config = LoraConfig(**options)
        return get_peft_model(model, config)
    except (TypeError, ValueError) as err:
        raise InputError(f"lora={lora!r}: peft refused it ({' '.join(str(err).split())}); pass peft.LoraConfig "
                         "keyword arguments that fit this model") from err


def is_peft_model(model: torch.nn.Module) -> bool:
    """True for a peft-wrapped model (adapters to save separately)."""
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


class AdapterDisabledReference(torch.nn.Module):
    """π_ref as a view of a peft policy with its adapters disabled: no weights of its own.

    Called like a causal LM (``forward(**kwargs)``); every call runs under ``disable_adapter()``
    and without gradients.
    """

    def __init__(self, peft_policy: torch.nn.Module) -> None:
        super().__init__()
        self._policy = [peft_policy]  # a list, so the policy's parameters are not registered twice
        self.config = peft_policy.config

    @property
    def device(self) -> torch.device:
        return next(self._policy[0].parameters()).device

    def get_base_model(self) -> torch.nn.Module:
        """The transformers model under the adapters (what ``forward`` runs, adapters off)."""
        return self._policy[0].get_base_model()

    def get_input_embeddings(self) -> torch.nn.Module:
        """The policy's token embedding, called with adapters disabled (LoRA may target it)."""
        return _AdaptersDisabled(self._policy[0].get_input_embeddings(), self._policy[0])

    def get_output_embeddings(self) -> torch.nn.Module:
        """The policy's LM head, called with adapters disabled (LoRA may target it)."""
        return _AdaptersDisabled(self._policy[0].get_output_embeddings(), self._policy[0])

    @torch.no_grad()
    def forward(self, **kwargs: Any):
        policy = self._policy[0]
        with policy.disable_adapter():
            return policy(**kwargs)


class _AdaptersDisabled(torch.nn.Module):
    """Calls ``module`` (a part of a peft policy) under the policy's ``disable_adapter()``, without gradients."""

    def __init__(self, module: torch.nn.Module, peft_policy: torch.nn.Module) -> None:
        super().__init__()
        self._parts = [module, peft_policy]  # a list: no parameters registered here

    @torch.no_grad()
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        module, policy = self._parts
        with policy.disable_adapter():
            return module(*args, **kwargs)
