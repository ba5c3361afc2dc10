"""LoRA mode: train low-rank adapters on the policy; the reference is the same model with adapters off.

One copy of the base weights serves both π_θ (adapters on) and π_ref (adapters disabled), so the KL
penalty costs no second model in memory (Hu et al. 2021; the TRL/peft "ref = disabled adapters" trick).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel


def apply_lora(model: PreTrainedModel, lora: dict[str, Any] | bool) -> torch.nn.Module:
    """Wrap ``model`` in a peft ``PeftModelForCausalLM``; ``lora`` is ``True`` or ``LoraConfig`` kwargs.

    Defaults: r=8, lora_alpha=16, lora_dropout=0, peft's default target modules for the architecture.
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:  # pragma: no cover - peft is in the `lora` extra
        raise ValueError("lora=... needs peft: pip install 'textenv[lora]'") from err
    options = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0, **({} if lora is True else dict(lora))}
    try:
        config = LoraConfig(task_type="CAUSAL_LM", **options)
    except TypeError as err:
        raise ValueError(f"lora={lora!r}: {err}; pass peft.LoraConfig keyword arguments") from err
    return get_peft_model(model, config)


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
